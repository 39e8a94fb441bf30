#!/usr/bin/python3
"""onnx_check.py: checks an ONNX model written by `speedrun export --onnx` against the logits the
network itself computed (a JSON reference the C++ test tests/io/test_onnx_export.cpp writes next
to each model).

  tools/onnx_check.py DIR                 every DIR/*.json reference with the model it names
  tools/onnx_check.py REF.json            one reference

For each model:
  1. onnx.checker.check_model(full_check=True) and strict shape inference; the output must be
     "logits" (N, 10) with a symbolic batch N.
  2. The graph is evaluated by the small numpy interpreter below, in float64, for exactly the op
     types the exporter uses (Sub Div Add Mul Erf Sigmoid Conv MaxPool BatchNormalization Flatten
     Gemm); any other op is an error. python3-onnx 1.12 (Debian 12) has no reference evaluator and
     onnxruntime is not packaged, so this is the forward pass; when onnxruntime is importable it
     runs the model too and is held to the same tolerance.
  3. Tolerance: max |logits - reference| <= 1e-4 * max |reference| (the largest logit sets the
     scale, since single logits can be near zero). The reference comes from the C++ backend in
     fp32 with other summation orders, so a few 1e-7 relative is what agreement looks like.
  4. The batch is dynamic: the first image alone gives the first row again.

Exit status: 0 all agree, 1 a check failed, 77 (ctest's SKIP_RETURN_CODE) when python3-onnx or
numpy is missing (apt-get install python3-onnx python3-numpy).
"""
import glob
import json
import math
import os
import sys

try:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper, shape_inference
except ImportError as e:  # not an error of the model: say why and let ctest report a skip
    print(f"onnx_check: SKIPPED: {e} (apt-get install python3-onnx python3-numpy)")
    sys.exit(77)

RTOL = 1e-4


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def conv(x, w, b, a):
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
        raise ValueError("Conv: only group 1, dilation 1 are interpreted")
    kh, kw = w.shape[2], w.shape[3]
    if list(a.get("kernel_shape", [kh, kw])) != [kh, kw]:
        raise ValueError("Conv: kernel_shape disagrees with the weight")
    pt, pl, pb, pr = a.get("pads", [0, 0, 0, 0])
    sh, sw = a.get("strides", [1, 1])
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    P = (xp.shape[2] - kh) // sh + 1
    Q = (xp.shape[3] - kw) // sw + 1
    y = np.zeros((x.shape[0], w.shape[0], P, Q))
    for r in range(kh):
        for s in range(kw):
            patch = xp[:, :, r:r + (P - 1) * sh + 1:sh, s:s + (Q - 1) * sw + 1:sw]
            y += np.einsum("nchw,kc->nkhw", patch, w[:, :, r, s])
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def maxpool(x, a):
    if any(a.get("pads", [0, 0, 0, 0])) or a.get("ceil_mode", 0) or "dilations" in a:
        raise ValueError("MaxPool: only unpadded, floor-mode pooling is interpreted")
    kh, kw = a["kernel_shape"]
    sh, sw = a.get("strides", [1, 1])
    P = (x.shape[2] - kh) // sh + 1
    Q = (x.shape[3] - kw) // sw + 1
    y = np.full((x.shape[0], x.shape[1], P, Q), -np.inf)
    for r in range(kh):
        for s in range(kw):
            y = np.maximum(y, x[:, :, r:r + (P - 1) * sh + 1:sh, s:s + (Q - 1) * sw + 1:sw])
    return y


def batchnorm(x, scale, bias, mean, var, a):
    c = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + a.get("epsilon", 1e-5)) * scale.reshape(c) + bias.reshape(c)


def gemm(A, B, C, a):
    if a.get("transA", 0):
        A = A.T
    if a.get("transB", 0):
        B = B.T
    y = a.get("alpha", 1.0) * (A @ B)
    if C is not None:
        y = y + a.get("beta", 1.0) * C
    return y


ERF = np.vectorize(math.erf)


def run_numpy(model, image):
    """Evaluates the graph on image (float64) with the interpreter above; returns the first output."""
    g = model.graph
    v = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    v[g.input[0].name] = image.astype(np.float64)
    for n in g.node:
        a = attrs(n)
        i = [v[name] if name else None for name in n.input]
        op = n.op_type
        if op == "Sub":
            y = i[0] - i[1]
        elif op == "Div":
            y = i[0] / i[1]
        elif op == "Add":
            y = i[0] + i[1]
        elif op == "Mul":
            y = i[0] * i[1]
        elif op == "Erf":
            y = ERF(i[0])
        elif op == "Sigmoid":
            y = 1.0 / (1.0 + np.exp(-i[0]))
        elif op == "Conv":
            y = conv(i[0], i[1], i[2] if len(i) > 2 else None, a)
        elif op == "MaxPool":
            y = maxpool(i[0], a)
        elif op == "BatchNormalization":
            if len(n.output) != 1:
                raise ValueError("BatchNormalization: training-mode outputs are not expected")
            y = batchnorm(*i[:5], a)
        elif op == "Flatten":
            ax = a.get("axis", 1)
            y = i[0].reshape(int(np.prod(i[0].shape[:ax])), -1)
        elif op == "Gemm":
            y = gemm(i[0], i[1], i[2] if len(i) > 2 else None, a)
        else:
            raise ValueError(f"op {op} (node {n.name}) is not in this interpreter")
        v[n.output[0]] = y
    return v[g.output[0].name]


def shape_of(value_info):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check(ref_path):
    """Returns a list of failures (empty: all good) for one reference file."""
    with open(ref_path) as f:
        ref = json.load(f)
    model_path = os.path.join(os.path.dirname(ref_path), ref["model"])
    name = os.path.basename(model_path)
    fails = []
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    out = inferred.graph.output[0]
    if out.name != "logits" or shape_of(out) != ["N", 10]:
        fails.append(f"{name}: output is {out.name} {shape_of(out)}, expected logits ['N', 10]")
    inp = model.graph.input[0]
    if inp.name != "image" or shape_of(inp) != ["N", 3, 32, 32]:
        fails.append(f"{name}: input is {inp.name} {shape_of(inp)}, expected image ['N', 3, 32, 32]")

    x = np.array(ref["input"], dtype=np.float32).reshape(ref["input_shape"])
    want = np.array(ref["logits"], dtype=np.float64).reshape(ref["logits_shape"])
    scale = float(np.max(np.abs(want)))

    def compare(what, got):
        err = float(np.max(np.abs(got - want[:got.shape[0]]))) / scale
        ok = err <= RTOL and got.shape == want[:got.shape[0]].shape
        print(f"onnx_check: {name} ({ref.get('activation', '?')}): {what}: max |diff| / max |ref| = {err:.2e} "
              f"(allowed {RTOL:g}) {'ok' if ok else 'FAILED'}")
        if not ok:
            fails.append(f"{name}: {what} differs from the reference by {err:.2e} of the largest logit")

    compare(f"numpy interpreter, batch {x.shape[0]}", run_numpy(model, x))
    compare("numpy interpreter, batch 1", run_numpy(model, x[:1]))
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnx_check: onnxruntime is not installed; the numpy interpreter is the forward pass")
    else:
        sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        compare(f"onnxruntime {ort.__version__}", sess.run(["logits"], {"image": x})[0].astype(np.float64))
    return fails


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 1
    refs = sorted(glob.glob(os.path.join(argv[1], "*.json"))) if os.path.isdir(argv[1]) else [argv[1]]
    if not refs:
        print(f"onnx_check: {argv[1]}: no *.json references (run the C++ test OnnxExport with "
              f"SPEEDRUN_ONNX_CHECK_DIR={argv[1]} first)")
        return 1
    fails = []
    for r in refs:
        try:
            fails += check(r)
        except Exception as e:  # a checker or interpreter error is a failed check, named
            fails.append(f"{r}: {type(e).__name__}: {e}")
    for f in fails:
        print(f"onnx_check: FAILED: {f}")
    print(f"onnx_check: {len(refs)} model(s), {'all agree' if not fails else f'{len(fails)} failure(s)'} "
          f"(onnx {onnx.__version__}, numpy {np.__version__})")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
