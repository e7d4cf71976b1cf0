// The one-node loss of tasks/_stacked.py (_MemberAffineCrossEntropy) as a C++ autograd node: the same
// aten calls in the same order, so the same bits (tests/tasks/test_stacked.py). A Python autograd.Function's
// calls into and out of Python cost more than half of a small model's whole step alone, which is what a
// batched group must undercut (benchmarks/README.md). Built on first use by torch.utils.cpp_extension.load.
#include <torch/extension.h>

#include <vector>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

constexpr int64_t kCpuAlignment = 64;  // optimizers/_runs.py: CPU_ALIGNMENT

// optimizers/_runs.py: aligned_members. An empty [runs, *shape] whose member slices start on 64-byte lines.
at::Tensor aligned_members(int64_t runs, std::vector<int64_t> shape, const at::Tensor& like) {
  int64_t size = 1;
  for (int64_t s : shape) size *= s;
  std::vector<int64_t> full{runs};
  full.insert(full.end(), shape.begin(), shape.end());
  const int64_t per_line = kCpuAlignment / like.element_size();
  if (size % per_line == 0) return at::empty(full, like.options());
  const int64_t padded = (size + per_line - 1) / per_line * per_line;
  return at::empty({runs, padded}, like.options()).narrow(1, 0, size).view(full);
}

// tasks/_stacked.py: _plain_loop. Products torch's CPU bmm would round unlike BLAS go member by member.
bool plain_loop(const at::Tensor& x, const at::Tensor& weight) {
  return x.device().is_cpu() && x.size(1) * x.size(2) * weight.size(1) < 400;
}

at::Tensor member_affine(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  at::Tensor out = aligned_members(x.size(0), {x.size(1), weight.size(1)}, x);
  if (!plain_loop(x, weight)) return at::baddbmm_out(out, bias.unsqueeze(1), x, weight.transpose(1, 2));
  for (int64_t r = 0; r < x.size(0); ++r) {
    at::Tensor out_r = out[r];
    at::addmm_out(out_r, bias[r], x[r], weight[r].t());
  }
  return out;
}

// F.cross_entropy's nll_loss arguments: no class weights, Reduction::None, its ignore_index.
constexpr int64_t kReductionNone = 0;
constexpr int64_t kIgnoreIndex = -100;

struct MemberAffineCrossEntropy : public torch::autograd::Function<MemberAffineCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& y) {
    at::Tensor logits = member_affine(x, weight, bias);
    const int64_t runs = logits.size(0), b = logits.size(1), k = logits.size(2);
    at::Tensor logp = at::_log_softmax(logits.reshape({runs * b, k}), 1, false);
    at::Tensor target = y.reshape(-1);
    auto [per_sample, total_weight] = at::nll_loss_forward(logp, target, {}, kReductionNone, kIgnoreIndex);
    ctx->save_for_backward({x, weight, logp, target, total_weight});
    return per_sample.view({runs, b}).mean(1);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &logp = saved[2], &target = saved[3];
    const int64_t runs = x.size(0), b = x.size(1);
    at::Tensor per_sample = (grads[0] / b).unsqueeze(1).expand({runs, b}).reshape(-1);  // the mean's
    at::Tensor g = at::nll_loss_backward(per_sample, logp, target, {}, kReductionNone, kIgnoreIndex, saved[4]);
    g = at::_log_softmax_backward_data(g, logp, 1, logp.scalar_type()).view({runs, b, -1});

    at::Tensor grad_x, grad_w, grad_b;  // as tasks/_stacked.py: _member_affine_grads
    if (ctx->needs_input_grad(0)) grad_x = at::bmm(g, weight);
    if (ctx->needs_input_grad(1)) {
      grad_w = aligned_members(runs, {weight.size(1), weight.size(2)}, g);
      if (!plain_loop(x, weight)) {
        at::bmm_out(grad_w, g.transpose(1, 2), x);
      } else {
        for (int64_t r = 0; r < runs; ++r) {
          at::Tensor grad_w_r = grad_w[r];
          at::mm_out(grad_w_r, g[r].t(), x[r]);
        }
      }
    }
    if (ctx->needs_input_grad(2)) grad_b = g.sum(1);
    return {grad_x, grad_w, grad_b, at::Tensor()};
  }
};

at::Tensor member_affine_cross_entropy(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                       const at::Tensor& y) {
  return MemberAffineCrossEntropy::apply(x, weight, bias, y);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("member_affine_cross_entropy", &member_affine_cross_entropy,
        "Each member's mean cross-entropy of its stacked affine layer's logits, [R], as one autograd node");
}
