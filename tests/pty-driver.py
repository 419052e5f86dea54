# Runs a command in a pseudo-terminal for tests of the interactive prompt.
# Reads JSON lines on stdin: {"write": "text"} types text; {"expect": "regex",
# "timeout": s} waits until the terminal output (since the last match) matches
# and answers {"ok": true, "text": ...} or {"ok": false, "text": ...} on stdout;
# {"wait": s} waits for the command to exit and answers {"ok": ..., "code": n}.
# {"output": true} answers {"ok": true, "text": everything the command wrote};
# {"signal": n} sends it signal n; {"hangup": true} closes the terminal (as
# closing its window does: SIGHUP, and reads and writes fail with EIO).
# PTY_COLUMNS and PTY_ROWS set the terminal's size (default 80 x 24).
import fcntl, json, os, pty, re, select, struct, sys, termios, time

pid, fd = pty.fork()
if pid == 0:
    size = struct.pack("HHHH", int(os.environ.get("PTY_ROWS", "24")), int(os.environ.get("PTY_COLUMNS", "80")), 0, 0)
    fcntl.ioctl(0, termios.TIOCSWINSZ, size)
    os.execvp(sys.argv[1], sys.argv[1:])

buf = b""
everything = b""
def pump(timeout):
    global buf, everything
    if fd < 0:
        time.sleep(timeout)
        return False
    r, _, _ = select.select([fd], [], [], timeout)
    if r:
        try:
            got = os.read(fd, 65536)
        except OSError:
            return False
        buf += got
        everything += got
    return True

for line in sys.stdin:
    cmd = json.loads(line)
    if "write" in cmd:
        os.write(fd, cmd["write"].encode())
        print(json.dumps({"ok": True}), flush=True)
    elif "expect" in cmd:
        deadline = time.time() + cmd.get("timeout", 10)
        pattern = re.compile(cmd["expect"].encode(), re.S)
        m = None
        while time.time() < deadline:
            m = pattern.search(buf)
            if m:
                break
            if not pump(0.05):
                break
        text = buf.decode("utf-8", "replace")
        if m:
            buf = buf[m.end():]
        print(json.dumps({"ok": bool(m), "text": text}), flush=True)
    elif "output" in cmd:
        while pump(0.05) and select.select([fd], [], [], 0)[0]:
            pass
        print(json.dumps({"ok": True, "text": everything.decode("utf-8", "replace")}), flush=True)
    elif "signal" in cmd:
        os.kill(pid, cmd["signal"])
        print(json.dumps({"ok": True}), flush=True)
    elif "hangup" in cmd:
        os.close(fd)
        fd = -1
        print(json.dumps({"ok": True}), flush=True)
    elif "wait" in cmd:
        deadline = time.time() + cmd["wait"]
        code = None
        while pid is not None and time.time() < deadline and code is None:
            pump(0.05)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"ok": code is not None, "code": code}), flush=True)
        if code is not None:
            pid = None
if pid is not None:
    os.kill(pid, 9)
