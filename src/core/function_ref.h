// function_ref.h: FunctionRef<R(Args...)>, a reference to a callable that owns nothing and
// allocates nothing (C++26's std::function_ref, in small), so that a callback can be passed in
// the training loop. The callable must outlive the call that receives the reference; a default
// FunctionRef is empty (false).
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace sr {

template <class Signature>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
public:
    FunctionRef() = default;
    template <class F>
        requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> && std::is_invocable_r_v<R, F&, Args...>)
    FunctionRef(F&& f)  // NOLINT: implicit, as std::function_ref
        : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
          call_([](void* obj, Args... args) -> R {
              return (*static_cast<std::remove_reference_t<F>*>(obj))(std::forward<Args>(args)...);
          }) {}

    explicit operator bool() const { return call_ != nullptr; }
    R operator()(Args... args) const { return call_(obj_, std::forward<Args>(args)...); }

private:
    void* obj_ = nullptr;
    R (*call_)(void*, Args...) = nullptr;
};

}  // namespace sr
