import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Records the CPU model, vector ISA level and thread count in the JSON (benchmarks/report.py
    prints them in the table's header)."""
    from machine import cpu_description

    machine_info["lic_quant"] = cpu_description()
