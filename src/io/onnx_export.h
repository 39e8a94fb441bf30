// onnx_export.h: the eval-mode network as an ONNX model (`speedrun export --onnx`).
// Built only with libonnx-dev (CMake says "ONNX ON"); without it export_onnx throws sr::Error
// saying so, and onnx_export_available() is false. No ONNX type appears in this header.
//
// The graph (opset 13, IR version 8), written once here and in docs/inference.md:
//   input  "image"  float (N,3,32,32): RGB in [0,1] (pixel / 255), NCHW, N dynamic ("N")
//   Sub mean, Div std (the recipe's, shape (1,3,1,1))
//   Conv whitening k x k, valid, with bias (weights OHWI -> OIHW) -> GELU
//   3 x [Conv 3x3 pad 1 -> MaxPool 2 -> BatchNormalization -> act -> Conv 3x3 pad 1 ->
//        BatchNormalization -> act]                  (BN in inference form: running stats, eps)
//   MaxPool(final_pool) -> Flatten -> Gemm (head weight (10,C), transB) -> Mul scaling_factor
//   output "logits" float (N,10): the network's logits for one view (no TTA, no softmax)
// GELU is 0.5 x (1 + Erf(x / sqrt 2)) (opset 13 has no Gelu op); SiLU is x * Sigmoid(x).
#pragma once
#include <array>
#include <string>

#include "model/network.h"

namespace sr {

struct OnnxExportInfo {
    int opset = 0;
    int nodes = 0;          // nodes in the graph
    size_t bytes = 0;       // size of the serialised model
};

bool onnx_export_available();

// Serialises net's current parameters (downloaded from its backend) with mean/std of the recipe
// into an ONNX ModelProto, checks it with onnx::checker, and writes it atomically to path.
OnnxExportInfo export_onnx(const std::string& path, const Network& net, const std::array<float, 3>& mean,
                           const std::array<float, 3>& stdev);

}  // namespace sr
