"""The science experiment of fusionc.nn: data made here with GFN2-xTB, and the fusion block against
MACE's product basis (`python -m benchmarks.science.data`, then `python -m benchmarks.science.run`)."""
