"""Make an ONNX model's input height and width (and its output's) dynamic, in place.

A developer step for a fully convolutional model exported with a fixed frame size (the
bundled ``inference/models/default`` before it was made dynamic), so that the several-animals
worker can run it on crops (``inference/track_crops.py``). The graph and weights are
unchanged; only the declared dimensions 2 and 3 of the first input and output are renamed.
Needs the ``onnx`` package (the ``export`` extra)::

    .venv/bin/python scripts/onnx_dynamic_hw.py inference/models/default/model.onnx
"""

from __future__ import annotations

import argparse


def main() -> None:
    import onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the .onnx file (rewritten)")
    args = ap.parse_args()
    m = onnx.load(args.model)
    for value, names in ((m.graph.input[0], ("height", "width")),
                         (m.graph.output[0], ("height_out", "width_out"))):
        dims = value.type.tensor_type.shape.dim
        for i, name in zip((2, 3), names, strict=True):
            dims[i].ClearField("dim_value")
            dims[i].dim_param = name
    del m.graph.value_info[:]  # shapes inferred from fixed sizes would disagree
    onnx.checker.check_model(m)
    onnx.save(m, args.model)


if __name__ == "__main__":
    main()
