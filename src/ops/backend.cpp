// backend.cpp: the few out-of-line pieces of backend.h.
#include "ops/backend.h"

#include "core/error.h"

namespace sr {

void Conv2d::refuse_unplanned(const char* call, bool dx, bool dw) const {
    const ConvShape& s = shape;
    if (s.forward_only)
        fail("{} of conv {}x{} stride {} {}->{} at {}x{} N{}: it was set up forward-only "
             "(ConvShape::forward_only, an evaluation workspace's), with no backward path",
             call, s.R, s.S, s.stride, s.C, s.K, s.H, s.W, s.N);
    if ((dx && s.no_input_grad) || (dw && s.frozen_weights))
        fail("{} of conv {}x{} stride {} {}->{} at {}x{} N{}: it was set up without {} (ConvShape::{})",
             call, s.R, s.S, s.stride, s.C, s.K, s.H, s.W, s.N,
             dx && s.no_input_grad ? "the input's gradient" : "the weights' gradient",
             dx && s.no_input_grad ? "no_input_grad" : "frozen_weights");
}

}  // namespace sr
