# Runs a command in a pseudo-terminal for tests of the interactive prompt.
# Reads JSON lines on stdin: {"write": "text"} types text; {"expect": "regex",
# "timeout": s} waits until the terminal output (since the last match) matches
# and answers {"ok": true, "text": ...} or {"ok": false, "text": ...} on stdout;
# {"wait": s} waits for the command to exit and answers {"ok": ..., "code": n}.
import json, os, pty, re, select, sys, time

pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])

buf = b""
def pump(timeout):
    global buf
    r, _, _ = select.select([fd], [], [], timeout)
    if r:
        try:
            buf += os.read(fd, 65536)
        except OSError:
            return False
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
    elif "wait" in cmd:
        deadline = time.time() + cmd["wait"]
        code = None
        while time.time() < deadline and code is None:
            pump(0.05)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"ok": code is not None, "code": code}), flush=True)
        if code is not None:
            sys.exit(0)
os.kill(pid, 9)
