"""Summary lines on stdout, and every figure in bench/out/results-<time>.json."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bed import OUT_DIR
from bench.render import render


def goal(met: bool, text: str) -> str:
    return f"goal {text}: {'met' if met else 'NOT met'}"


def _machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpu": cpu,
        "cores": str(len([x for x in Path("/sys/devices/system/cpu").glob("cpu[0-9]*")])),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python (bench)": platform.python_version(),
    }


@dataclass
class Report:
    """Collects the summary lines, which goals were met, and the raw figures."""

    command: str
    started: float = field(default_factory=time.time)
    lines: list[str] = field(default_factory=list)
    goals: dict[str, bool] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def summary(self, line: str) -> None:
        self.lines.append(line)
        print(f"[bench] {line}", flush=True)

    def goal(self, name: str, met: bool) -> None:
        self.goals[name] = met

    def write(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        path = OUT_DIR / f"results-{stamp}.json"
        document = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started)),
            "wall_seconds": time.time() - self.started,
            "command": self.command,
            "machine": _machine(),
            "summary": self.lines,
            "goals": self.goals,
            **self.data,
        }
        path.write_text(json.dumps(document, indent=1) + "\n")
        path.with_suffix(".md").write_text(render(document))
        return path
