"""Children die with their launcher, and an output folder holds one run (issue #18).

Real processes, no Flower: a parent process spawns a sleeping child through
:func:`coordinator.federation.lifetime.spawn` — from a worker thread that has ended by then, the
case where a plain ``PR_SET_PDEATHSIG`` in ``preexec_fn`` would fire early — and is killed with
SIGKILL; the child must be gone within a second. The folder lock is taken in one process and
refused in another, naming folder and pid, and freed when its holder is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from coordinator.study.runner import FolderBusy, exclusive_folder

ROOT = Path(__file__).resolve().parents[2]

PARENT = textwrap.dedent(
    """
    import sys, threading, time
    from coordinator.federation.lifetime import spawn

    box, sleeper = [], [sys.executable, "-c", "import time; time.sleep(60)"]
    t = threading.Thread(target=lambda: box.append(spawn(sleeper)))
    t.start(); t.join()  # the asking thread is gone: the child must not die with it
    print(box[0].pid, flush=True)
    time.sleep(60)
    """
)


def _python(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )


def test_a_spawned_child_outlives_its_asking_thread_and_dies_with_its_process():
    parent = _python(PARENT)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        time.sleep(0.3)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE  # thread ended, child lives
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        gone, alive = psutil.wait_procs([child], timeout=2)
        assert not alive, "the child survived its parent's SIGKILL"
    finally:
        parent.kill()
        parent.wait()


def test_an_output_folder_holds_one_run_and_is_freed_when_its_holder_dies(tmp_path):
    holder = _python(
        "import sys, time; from pathlib import Path; from coordinator.study.runner import exclusive_folder\n"
        f"with exclusive_folder(Path({str(tmp_path)!r})):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy) as refused:
            with exclusive_folder(tmp_path):
                pytest.fail("a second run got the folder")
        assert str(tmp_path) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    with exclusive_folder(tmp_path) as folder:  # the kernel dropped the dead holder's lock
        assert (folder / "run.lock").read_text().strip() == str(os.getpid())
