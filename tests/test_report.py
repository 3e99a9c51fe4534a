"""The report: markdown table and the per-layer width plot with stage boundaries."""

from lwdna_plugin.report import stage_of, stage_starts


def test_stages_from_layer_names():
    assert stage_of("layer2.0.conv1") == "layer2"
    assert stage_of("stages.1.0.conv1") == "stages.1"
    assert stage_of("blocks.3.2.conv_pw") == "blocks.3"
    assert stage_of("conv_stem") == stage_of("fc") == ""
    names = ["conv1", "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0", "fc"]
    assert stage_starts(names) == [0, 1, 3, 5]


def test_plot_has_integer_ticks_and_stage_lines(resnet18_result, tmp_path):
    resnet18_result.report.plot(tmp_path / "channels.png")
    assert (tmp_path / "channels.png").stat().st_size > 0
    (ax,) = resnet18_result.report.figure().axes
    ticks = [t for t in ax.get_xticks() if 0 <= t < len(resnet18_result.report.layers)]
    assert ticks and all(float(t).is_integer() for t in ticks)
    lines = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    starts = stage_starts([r.name for r in resnet18_result.report.layers])
    assert len(starts) > 2 and len(lines) == len(starts) - 1


def test_table_index_matches_the_plot_and_the_legend_covers_no_bar(resnet18_result):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    report = resnet18_result.report
    rows = [line for line in report.to_markdown().splitlines() if line.startswith("| ") and "`" in line]
    assert [int(row.split("|")[1]) for row in rows] == list(range(len(report.layers)))
    assert rows[19].split("|")[2].strip() == f"`{report.layers[19].name}`"  # x = 19 in the plot
    fig = report.figure()
    renderer = FigureCanvasAgg(fig).get_renderer()
    (ax,) = fig.axes
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def test_the_report_names_how_channels_were_ranked(resnet18_result):
    text = resnet18_result.report.to_markdown()
    assert "channels ranked by saliency per FLOP they cost" in text
    assert "flops per FLOP" not in text
