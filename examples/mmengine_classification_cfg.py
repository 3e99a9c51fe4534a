# An mmengine config file for `lwdna dissimilate --mm-config examples/mmengine_classification_cfg.py --out DIR`.
# The model and dataset types are registered by the example module next to this file.
custom_imports = dict(imports=["mmengine_classification"], allow_failed_imports=False)

model = dict(type="SmallConvNet", channels=(16, 32, 64))
train_dataloader = dict(
    dataset=dict(type="MNIST5k"),
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    batch_size=32,
)
