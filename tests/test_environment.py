"""The environment record's CPU (profilers.environment.cpu_model): which CPU measured a row, told apart
from another of the same name."""

from __future__ import annotations

from pathlib import Path

from profilers.environment import cpu_model

# A cloud VM's /proc/cpuinfo, two vCPUs: the name says only the vendor's line.
VM_PROCESSOR = """processor\t: {index}
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 {extra}
"""

# A Raspberry Pi 4 on a 64-bit kernel: no "model name"; the board's lines come after the last processor.
PI_PROCESSOR = """processor\t: {index}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""
PI_BOARD = "Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
PI_4 = "\n".join([*(PI_PROCESSOR.format(index=i) for i in range(4)), PI_BOARD])


def vm(tmp_path: Path, name: str, family: int, model: int, extra: str) -> Path:
    path = tmp_path / name
    blocks = [VM_PROCESSOR.format(index=i, family=family, model=model, extra=extra) for i in range(2)]
    path.write_text("\n".join(blocks))
    return path


def test_two_hosts_of_one_name_are_told_apart_by_family_model_and_extensions(tmp_path):
    zen5 = cpu_model(vm(tmp_path, "a", 26, 2, "avx512f avx512_vnni avx512_bf16 avx_vnni"))
    zen3 = cpu_model(vm(tmp_path, "b", 25, 1, ""))
    extensions = "avx2 fma avx512f avx512_vnni avx_vnni avx512_bf16"  # in _ISA_FLAGS' order, not the file's
    assert zen5 == f"AMD EPYC (family 26 model 2 stepping 1; {extensions})"
    assert zen3 == "AMD EPYC (family 25 model 1 stepping 1; avx2 fma)"


def test_a_raspberry_pi_is_named_by_its_board_and_arm_part(tmp_path):
    (tmp_path / "cpuinfo").write_text(PI_4)
    board = "Raspberry Pi 4 Model B Rev 1.4"
    assert cpu_model(tmp_path / "cpuinfo") == f"{board} (implementer 0x41 part 0xd08 variant 0x0; asimd)"


def test_without_a_cpuinfo_the_platform_names_the_machine(tmp_path):
    assert cpu_model(tmp_path / "missing")  # macOS, Windows: platform.processor() or the machine type
