# cuda_archs.cmake: which GPU architectures the CUDA backend is compiled for when the user does not
# say (CMAKE_CUDA_ARCHITECTURES).
#
# By default: A100 (sm_80) and H100/H200 (sm_90) as real code, plus PTX of sm_90 for newer GPUs.
# sm_86/87/89 run the sm_80 code (same major version). A GPU on the building machine that these
# do not cover natively (a T4's sm_75, an L4's or RTX 4090's sm_89, a Blackwell) is added as real
# code too, so that building and training on one machine (the README's first command) works on
# it without a JIT compile of the PTX at start-up, or at all (sm_75 can run neither sm_80 code nor
# sm_90 PTX). Older GPUs than sm_75 (Volta and before; CUDA 13 dropped them) are not added: the
# kernels have never been compiled for them. Such a GPU, or one this nvcc cannot compile for, is
# reported, and the CPU backend still works.
#
# speedrun_cuda_archs(OUT GPU_CAPS NVCC_ARCHS)
#   GPU_CAPS    what `nvidia-smi --query-gpu=compute_cap --format=csv,noheader` printed: one
#               "major.minor" per GPU and line (empty: no GPU, or no nvidia-smi)
#   NVCC_ARCHS  what `nvcc --list-gpu-arch` printed ("compute_75 compute_80 ...", any spacing)
#   OUT         the list for CMAKE_CUDA_ARCHITECTURES; ${OUT}_NOTE a line for the log (empty when
#               nothing was added or refused)
# Pure string work (no commands run), so that tests/cmake/test_cuda_archs.cmake can check it.
function(speedrun_cuda_archs out gpu_caps nvcc_archs)
  set(archs 80-real 90-real 90-virtual)
  set(added "")
  set(refused "")
  string(REGEX REPLACE "[\r\n]+" ";" caps "${gpu_caps}")
  foreach(cap IN LISTS caps)
    string(STRIP "${cap}" cap)
    if(NOT cap MATCHES "^([0-9]+)\\.([0-9]+)$")
      continue()  # an empty line, or something nvidia-smi says instead of a capability
    endif()
    set(arch "${CMAKE_MATCH_1}${CMAKE_MATCH_2}")
    if(arch STREQUAL "80" OR arch STREQUAL "90" OR "${arch}-real" IN_LIST archs)
      continue()
    endif()
    if(arch GREATER_EQUAL 75 AND nvcc_archs MATCHES "compute_${arch}([^0-9]|$)")
      list(APPEND archs "${arch}-real")
      list(APPEND added "sm_${arch}")
    elseif(NOT "sm_${arch}" IN_LIST refused)
      list(APPEND refused "sm_${arch}")
    endif()
  endforeach()
  set(note "")
  if(added)
    string(REPLACE ";" ", " a "${added}")
    set(note "added this machine's GPU (${a}) to the default architectures")
  endif()
  if(refused)
    string(REPLACE ";" ", " r "${refused}")
    if(note)
      string(APPEND note "; ")
    endif()
    string(APPEND note "this machine's GPU (${r}) is not among the architectures this build can "
                       "target (sm_75 and newer that this nvcc compiles for): the CUDA backend will "
                       "not run on it (the CPU backend will)")
  endif()
  set(${out} "${archs}" PARENT_SCOPE)
  set(${out}_NOTE "${note}" PARENT_SCOPE)
endfunction()
