"""The sandbox against ordinary and hostile programs: each contained, with the right verdict."""

import os
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from tracetune.errors import SandboxError
from tracetune.sandbox import Job, Sandbox, SandboxConfig


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxConfig(timeout_s=5, memory_mb=512, max_procs=32)) as s:
        yield s


def _strong(sb) -> bool:
    return sb.isolation == "bwrap" or sb.privileged


def test_program_pass_and_output(sb):
    r = sb.run(Job.program("print('hello'); import sys; print('oops', file=sys.stderr)"))
    assert (r.status, r.exit_code) == ("pass", 0)
    assert r.stdout == "hello\n" and r.stderr == "oops\n"


def test_program_nonzero_exit_is_fail(sb):
    r = sb.run(Job.program("import sys; sys.exit(3)"))
    assert r.status == "fail" and r.exit_code == 3 and "exit code 3" in r.reason


def test_syntax_error_is_error(sb):
    r = sb.run(Job.program("def f(:\n  pass"))
    assert r.status == "error" and "SyntaxError" in r.reason


def test_pytest_per_test_outcomes(sb):
    module = "def add(a, b):\n    return a + b\n"
    tests = ("from solution import add\n"
             "def test_ok():\n    assert add(1, 2) == 3\n"
             "def test_bad():\n    assert add(1, 1) == 3\n")
    r = sb.run(Job.tests(tests, module=module))
    assert r.status == "fail" and r.reason == "1 of 2 tests failed"
    outcomes = {t.nodeid.split("::")[1]: t.outcome for t in r.tests}
    assert outcomes == {"test_ok": "passed", "test_bad": "failed"}
    assert "assert 2 == 3" in next(t.message for t in r.tests if t.outcome == "failed")


def test_pytest_all_pass(sb):
    r = sb.run(Job.tests("import pytest\n@pytest.mark.parametrize('x', [1, 2, 3])\n"
                         "def test_p(x):\n    assert x > 0\n"))
    assert r.status == "pass" and len(r.tests) == 3


def test_pytest_import_error_and_no_tests_are_errors(sb):
    r = sb.run(Job.tests("from solution import missing\ndef test_x():\n    pass\n", module="x = 1\n"))
    assert r.status == "error" and "collection error" in r.reason
    r = sb.run(Job.tests("x = 1\n"))
    assert r.status == "error" and r.reason == "no tests collected"


def test_infinite_loop_times_out(sb):
    r = sb.run(Job.program("while True:\n    pass\n", timeout_s=1))
    assert r.status == "timeout" and 1.0 <= r.duration_s < 3.0


def test_fork_bomb_is_contained(sb, processes_with):
    marker = f"bomb{uuid.uuid4().hex[:8]}"
    code = (f"import os, time\nos.environ['M'] = '{marker}'\n"
            "children = 0\n"
            "for _ in range(500):\n"
            "    try:\n"
            "        if os.fork() == 0:\n"
            f"            os.execv('/bin/sleep', ['sleep', '300', '{marker}'])\n"
            "        children += 1\n"
            "    except OSError:\n"
            "        break\n"
            "print(children)\n")
    r = sb.run(Job.program(code, timeout_s=3))
    assert r.status == "pass"  # the program itself ends; its children are killed
    assert int(r.stdout) < 500  # RLIMIT_NPROC stopped it
    assert processes_with(marker) == []


def test_memory_hog_is_stopped(sb):
    r = sb.run(Job.program("x = bytearray(4 * 1024 ** 3)\nprint(len(x))"))
    assert r.status == "error" and "memory" in r.reason


def test_orphan_child_does_not_survive(sb, processes_with):
    marker = f"orphan{uuid.uuid4().hex[:8]}"
    code = ("import subprocess\n"
            f"subprocess.Popen(['/bin/sleep', '300', '{marker}'], start_new_session=True,"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('parent done')\n")
    r = sb.run(Job.program(code))
    assert r.status == "pass" and r.stdout == "parent done\n"
    assert processes_with(marker) == []


def test_timeout_kills_whole_tree(sb, processes_with):
    marker = f"tree{uuid.uuid4().hex[:8]}"
    code = ("import subprocess, time\n"
            f"subprocess.Popen(['/bin/sleep', '300', '{marker}'])\n"
            "time.sleep(300)\n")
    r = sb.run(Job.program(code, timeout_s=1))
    assert r.status == "timeout"
    assert processes_with(marker) == []


def test_network_is_unreachable(sb):
    if not _strong(sb):
        pytest.skip("network isolation needs bwrap or root (weaker fallback mode)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: _accept(server, accepted))
    t.start()
    code = ("import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'leak')\nprint('connected')\n")
    r = sb.run(Job.program(code))
    t.join()
    server.close()
    assert r.status == "fail" and "connected" not in r.stdout
    assert accepted == []


def _accept(server, accepted):
    try:
        conn, _ = server.accept()
        accepted.append(conn.recv(10))
        conn.close()
    except OSError:
        pass


def test_write_outside_directory_is_refused(sb):
    if not _strong(sb):
        pytest.skip("filesystem protection needs bwrap or root (weaker fallback mode)")
    # A host directory the sandbox can see (not under /tmp, which bwrap replaces).
    host_dir = Path(tempfile.mkdtemp(dir=Path(__file__).resolve().parent))
    try:
        os.chmod(host_dir, 0o777)  # even a world-writable host directory stays untouched
        target = host_dir / "escaped.txt"
        r = sb.run(Job.program(f"open({str(target)!r}, 'w').write('pwned')\n"))
        assert r.status == "fail"
        # With bwrap the project tree is not even in the check's view; as root without bwrap
        # the check's uid may not write there.
        assert any(m in r.stderr for m in ("Read-only", "Permission denied", "No such file"))
        assert not target.exists()
    finally:
        shutil.rmtree(host_dir)
    # Writing inside its own directory works.
    assert sb.run(Job.program("open('ok.txt', 'w').write('fine')")).status == "pass"


def test_tmp_is_private_with_bwrap(sb):
    if sb.isolation != "bwrap":
        pytest.skip("a private /tmp needs bwrap")
    name = f"/tmp/tracetune-leak-{uuid.uuid4().hex}"
    sb.run(Job.program(f"open({name!r}, 'w').write('x')"))
    assert not os.path.exists(name)


def test_ten_megabytes_of_output_is_capped(sb):
    r = sb.run(Job.program("import sys\nfor _ in range(10):\n    sys.stdout.write('x' * 1024 * 1024)\n"
                           "print('end', file=sys.stderr)\n"))
    assert r.status == "pass" and r.stdout_truncated
    assert len(r.stdout) == sb.config.output_cap_bytes
    assert r.stderr == "end\n"


def test_huge_file_is_stopped(sb):
    r = sb.run(Job.program("f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'0' * 1024 * 1024)\n"))
    assert r.status in ("error", "fail") and r.status != "pass"


def test_non_utf8_output_is_kept_readable(sb):
    r = sb.run(Job.program("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end')\n"))
    assert r.status == "pass" and r.stdout == "ok \\xff\\xfe end"


def test_parallel_checks_keep_their_own_results(sb):
    jobs = [Job.program(f"print({i} * {i})") for i in range(24)]
    results = sb.map(jobs)
    assert [r.stdout.strip() for r in results] == [str(i * i) for i in range(24)]
    assert all(r.status == "pass" for r in results)


def test_check_cannot_see_other_checks(sb):
    # Each check gets a fresh directory: a file left by one is not there for the next.
    sb.run(Job.program("open('left.txt', 'w').write('x')"))
    r = sb.run(Job.program("import os\nprint(sorted(os.listdir('.')))"))
    assert r.stdout.strip() == "['main.py']"


@pytest.mark.parametrize("job, message", [
    (Job(files={"a.py": "x"}, entry="b.py"), "entry"),
    (Job(files={"../a.py": "x"}, entry="../a.py"), "relative path"),
    (Job(files={"/etc/a.py": "x"}, entry="/etc/a.py"), "relative path"),
    (Job(files={"a.py": "x"}, entry="a.py", kind="shell"), "kind"),
])
def test_malformed_requests_are_refused(sb, job, message):
    with pytest.raises(SandboxError, match=message):
        sb.run(job)


def test_process_mode_still_contains_timeouts(processes_with):
    marker = f"proc{uuid.uuid4().hex[:8]}"
    with Sandbox(SandboxConfig(isolation="process", timeout_s=1)) as s:
        assert s.isolation == "process"
        r = s.run(Job.program(f"import subprocess, time\nsubprocess.Popen(['/bin/sleep', '300', "
                              f"'{marker}'], start_new_session=True)\ntime.sleep(60)\n"))
        assert r.status == "timeout"
    assert processes_with(marker) == []


def test_string_hash_order_is_the_same_in_every_sandbox():
    # list(set(words)) depends on the string hash seed: a check's verdict must not flip between
    # two runs (or two machines) of the same code.
    program = Job.program("print(list({f'w{i}' for i in range(30)}))")
    orders = []
    for _ in range(2):
        with Sandbox(SandboxConfig(workers=1)) as sb:  # a fresh zygote each time
            r = sb.run(program)
            assert r.status == "pass", r.reason
            orders.append(r.stdout)
    assert orders[0] == orders[1]


@pytest.mark.parametrize("isolation", ["process", "auto"])
def test_a_conftest_above_the_job_directory_is_never_loaded(tmp_path, monkeypatch, isolation):
    # The sandbox's directory is made under the temp dir: a conftest.py there (another user's
    # leftovers, or a planted one) must not run inside every pytest check, and pytest must not
    # walk the directories above the job's (in process mode the host's /tmp: slow).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    marker = tmp_path / "conftest_ran"
    (tmp_path / "conftest.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "def pytest_collection_modifyitems(items):\n    raise SystemExit(3)\n")
    with Sandbox(SandboxConfig(isolation=isolation, timeout_s=20)) as s:
        r = s.run(Job.tests("def test_ok():\n    assert True\n"))
    assert r.status == "pass", r.reason
    assert not marker.exists()


def test_exitfirst_stops_at_the_first_failed_test_and_still_names_every_collected_one(sb):
    tests = ("def test_a():\n    assert True\n\ndef test_b():\n    assert False\n\n"
             "def test_c():\n    assert False\n")
    full = sb.run(Job.tests(tests))
    first = sb.run(Job.tests(tests, exitfirst=True))
    assert [t.outcome for t in full.tests] == ["passed", "failed", "failed"]
    assert [(t.nodeid.split("::")[1], t.outcome) for t in first.tests] == \
        [("test_a", "passed"), ("test_b", "failed")]
    assert first.status == "fail" and len(first.collected) == 3
    with pytest.raises(SandboxError, match="exitfirst needs a pytest job"):
        sb.run(Job(files={"main.py": "pass"}, entry="main.py", exitfirst=True))
