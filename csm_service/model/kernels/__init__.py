"""CPU kernels of our own (C++, built at run time): see gemv.cpp and build.py."""
