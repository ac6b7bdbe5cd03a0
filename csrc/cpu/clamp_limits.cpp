// The host's copies of the float32 clamp limits (normal_dist.h, LQ_LIMIT): defined here, out of
// sight of the translation units whose loops read them, so that GCC compiles those clamps into
// vminps / vmaxps.
#include "../lic_quant/eb_math.h"
#include "../lic_quant/neg_exp.h"
#include "../lic_quant/normal_dist.h"

namespace lic_quant {
namespace host_limits {

extern const float kQuotientMax = ::lic_quant::kQuotientMax;
extern const float kHalfSquareArgMax = ::lic_quant::kHalfSquareArgMax;
extern const float kTailXMax = ::lic_quant::kTailXMax;
extern const float kExpNegMaxArg = ::lic_quant::kExpNegMaxArg;
extern const float kNegExpArgMax = ::lic_quant::kNegExpArgMax;
extern const float kNegExpScaleMin = ::lic_quant::kNegExpScaleMin;
extern const float kEbTanhArgMax = ::lic_quant::kEbTanhArgMax;
extern const float kEbTanhMax = ::lic_quant::kEbTanhMax;
extern const float kEbLogitMax = ::lic_quant::kEbLogitMax;

}  // namespace host_limits
}  // namespace lic_quant
