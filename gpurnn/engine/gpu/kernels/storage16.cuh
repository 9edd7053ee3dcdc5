// 16-bit storage types of the mixed precisions: gpurnn::half (IEEE binary16, numpy.float16)
// and gpurnn::bfloat16 (ml_dtypes.bfloat16). A kernel instantiated for one of them loads
// each element, widens it to float (exact), does all its maths in float (compute_t<T>) and
// rounds each stored result once to the storage type, round-to-nearest-even.
//
// Both are the bits only (a struct of one unsigned short, 2 bytes, the layout of CUDA's
// __half and __nv_bfloat16): no toolkit header is needed (NVRTC from the pip wheel has
// none). On the GPU the conversions are the PTX instructions cvt.f32.{f16,bf16} and
// cvt.rn.{f16,bf16}.f32 (sm_80 and later); in the host build they are written out below,
// with the same rounding (IEEE round-to-nearest-even, overflow to ±inf, NaN kept a quiet
// NaN), checked against numpy.float16 and ml_dtypes.bfloat16 bit for bit.
#pragma once

namespace gpurnn {

struct half {
  unsigned short bits;
};
struct bfloat16 {
  unsigned short bits;
};

// The type a kernel computes in for storage T: float for the 16-bit types, T otherwise.
template <class T> struct compute_type { typedef T type; };
template <> struct compute_type<half> { typedef float type; };
template <> struct compute_type<bfloat16> { typedef float type; };
template <class T> using compute_t = typename compute_type<T>::type;

#if defined(__CUDACC__)
__device__ __forceinline__ float widen(half x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}
__device__ __forceinline__ float widen(bfloat16 x) {
  // exact: the bfloat16 bits are float's upper half
  return __int_as_float((int)((unsigned int)x.bits << 16));
}
__device__ __forceinline__ half to_half(float f) {
  half h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
  return h;
}
__device__ __forceinline__ bfloat16 to_bfloat16(float f) {
  bfloat16 b;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b.bits) : "f"(f));
  return b;
}
#else  // the host shim: the same conversions in integer arithmetic
inline unsigned int float_bits_(float f) {
  unsigned int u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}
inline float bits_float_(unsigned int u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline float widen(bfloat16 x) { return bits_float_((unsigned int)x.bits << 16); }
inline float widen(half x) {
  unsigned int sign = (unsigned int)(x.bits & 0x8000u) << 16;
  unsigned int exponent = (x.bits >> 10) & 0x1Fu, mantissa = x.bits & 0x3FFu;
  if (exponent == 0x1Fu)  // inf, NaN (payload kept, as cvt.f32.f16)
    return bits_float_(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa · 2^-24, exact in float
    float magnitude = (float)mantissa * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_float_(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}
inline bfloat16 to_bfloat16(float f) {
  unsigned int u = float_bits_(f);
  bfloat16 b;
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: quiet, sign kept
    b.bits = (unsigned short)((u >> 16) | 0x0040u);
    return b;
  }
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even (overflow → inf)
  b.bits = (unsigned short)(u >> 16);
  return b;
}
inline half to_half(float f) {
  unsigned int u = float_bits_(f);
  unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
  unsigned int a = u & 0x7FFFFFFFu;
  half h;
  if (a > 0x7F800000u) {  // NaN: quiet, sign kept, the payload's top bits
    h.bits = (unsigned short)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    return h;
  }
  if (a >= 0x477FF000u) {  // ≥ 65520 (65504 + half an ulp: the tie rounds to even = inf)
    h.bits = (unsigned short)(sign | 0x7C00u);
    return h;
  }
  if (a < 0x38800000u) {  // below 2^-14: a subnormal or zero, in units of 2^-24
    // a · 2^24 exactly representable scaling, then one rounding to an integer, ties even
    float scaled = bits_float_(a) * 16777216.0f;  // exact (a power of two)
    unsigned int q = (unsigned int)scaled;
    float rest = scaled - (float)q;  // exact: scaled < 2^10 has 13+ fraction bits in float
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) ++q;
    h.bits = (unsigned short)(sign | q);  // q = 1024 is the smallest normal: still right
    return h;
  }
  // normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even
  unsigned int rebased = a - (112u << 23);
  rebased += 0xFFFu + ((rebased >> 13) & 1u);
  h.bits = (unsigned short)(sign | (rebased >> 13));
  return h;
}
#endif

GPURNN_HD float widen(float x) { return x; }
GPURNN_HD double widen(double x) { return x; }

// narrow<T>(value of compute_t<T>): the value stored as T (rounded once for 16-bit T).
template <class T> GPURNN_HD T narrow(compute_t<T> x) { return x; }
template <> GPURNN_HD half narrow<half>(float x) { return to_half(x); }
template <> GPURNN_HD bfloat16 narrow<bfloat16>(float x) { return to_bfloat16(x); }

}  // namespace gpurnn
