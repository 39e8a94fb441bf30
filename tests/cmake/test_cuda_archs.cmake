# test_cuda_archs.cmake (cmake -P): the default CUDA architectures for what nvidia-smi and nvcc
# report (cmake/cuda_archs.cmake).
cmake_minimum_required(VERSION 3.25)  # IN_LIST and the rest of the project's policies
include(${CMAKE_CURRENT_LIST_DIR}/../../cmake/cuda_archs.cmake)

set(nvcc13 "compute_75 compute_80 compute_86 compute_87 compute_88 compute_89 compute_90 compute_100
compute_110 compute_103 compute_120 compute_121")
set(failures 0)
function(expect gpu_caps nvcc want_archs want_note_regex)
  speedrun_cuda_archs(got "${gpu_caps}" "${nvcc}")
  if(NOT got STREQUAL want_archs)
    message(SEND_ERROR "GPU '${gpu_caps}': archs '${got}', expected '${want_archs}'")
  endif()
  if(NOT got_NOTE MATCHES "${want_note_regex}")
    message(SEND_ERROR "GPU '${gpu_caps}': note '${got_NOTE}' does not match '${want_note_regex}'")
  endif()
endfunction()

set(base "80-real;90-real;90-virtual")
expect("" "${nvcc13}" "${base}" "^$")                     # no GPU (CI)
expect("8.0" "${nvcc13}" "${base}" "^$")                  # A100: covered
expect("9.0\n9.0\n" "${nvcc13}" "${base}" "^$")           # two H100s
expect("7.5" "${nvcc13}" "${base};75-real" "sm_75")       # T4: added
expect("8.9\n8.9" "${nvcc13}" "${base};89-real" "sm_89\\)") # two L4s: added once
expect("12.0" "${nvcc13}" "${base};120-real" "sm_120")    # Blackwell RTX: compute_120, not 12
expect("8.6\r\n7.5" "${nvcc13}" "${base};86-real;75-real" "sm_86, sm_75")
expect("10.3" "${nvcc13}" "${base};103-real" "sm_103")    # in the middle of nvcc's list
expect("7.0" "${nvcc13}" "${base}" "sm_70\\) is not among")  # V100: CUDA 13 dropped it
expect("7.0" "compute_70 ${nvcc13}" "${base}" "sm_70\\) is not among")  # CUDA 12 has it: not ours
expect("10.0" "compute_75 compute_80 compute_90 compute_1000" "${base}" "sm_100\\) is not among")  # not a prefix match
expect("[N/A]\nNo devices were found" "${nvcc13}" "${base}" "^$")  # nvidia-smi's other output
