"""Dissimilate a timm model, save it, rebuild it without the plugin's objects, and train it.

    OMP_WAIT_POLICY=PASSIVE python examples/quickstart.py --model resnet18 --steps 20

The training loop below stands in for your own recipe: LW-DNA changes the architecture, not
how you train it.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lwdna_plugin as lw  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/quickstart")
    args = parser.parse_args()

    batches = lw.load_batches("mnist5k", batches=2, batch_size=64, img_size=args.img_size)
    result = lw.dissimilate(args.model, width=2.0, flops=1.0, data=batches, model_kwargs={"num_classes": 10})
    result.save(args.out)
    print(result.report.to_markdown().split("## Output channels")[0])

    lw.register_timm(f"{args.out}/spec.json", name=f"{args.model}_lwdna")
    model = timm.create_model(f"{args.model}_lwdna", num_classes=10)

    train = lw.load_batches("mnist5k", batches=args.steps, batch_size=32, img_size=args.img_size, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step, (images, targets) in enumerate(train):
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0 or step == len(train) - 1:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    torch.save(model.state_dict(), f"{args.out}/model.pt")
    rebuilt = lw.build(f"{args.out}/spec.json")
    rebuilt.load_state_dict(torch.load(f"{args.out}/model.pt", weights_only=True))
    print(f"reloaded the trained weights into lw.build('{args.out}/spec.json') with weights_only=True")


if __name__ == "__main__":
    main()
