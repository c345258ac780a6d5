# Sourced by scripts/build-llama-wheel.sh and bench/build-llama-server.sh: the llama-cpp-python
# release and the CMake flags of every llama.cpp build here, kept in one place so that the engine's
# wheel and the benchmark's llama-server are always the same llama.cpp built the same way.
# Why these flags: the default native build selects ggml's AMX path, which segfaults in the first
# llama_decode on these CPUs.
version=${MODELHOST_LLAMA_CPP_VERSION:-0.3.36}
flags=${MODELHOST_LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}
