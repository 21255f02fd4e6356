const fs = require("fs");
const net = require("net");
const os = require("os");
const { spawn } = require("child_process");

const res = (f) => { try { f(); return "ok"; } catch (e) { return e.code || String(e.message); } };
const readSome = (p) => {
  try {
    const fd = fs.openSync(p, "r");
    try { return "read " + fs.readSync(fd, Buffer.alloc(4096)); } finally { fs.closeSync(fd); }
  } catch (e) { return e.code || String(e.message); }
};
const connect = (opts) => new Promise((resolve) => {
  const s = net.connect(opts);
  const t = setTimeout(() => { s.destroy(); resolve("ETIMEDOUT"); }, 2000);
  s.on("connect", () => { clearTimeout(t); s.destroy(); resolve("ok"); });
  s.on("error", (e) => { clearTimeout(t); resolve(e.code || e.message); });
});

async function forkBomb() {
  const kids = [];
  try {
    while (kids.length < 10000) {
      const c = spawn(process.execPath, ["-e", "setTimeout(() => {}, 1e6)"], { stdio: "ignore" });
      const err = await new Promise((resolve) => { c.once("spawn", () => resolve(null)); c.once("error", resolve); });
      if (err) throw new Error(`fork bomb stopped after ${kids.length} children: ${err.code || err.message}`);
      kids.push(c);
    }
    return "no limit met";
  } finally {
    for (const c of kids) c.kill("SIGKILL");
  }
}

module.exports = async (req) => {
  const body = req.body.toString();
  const sp = body.indexOf(" ");
  const what = sp < 0 ? body : body.slice(0, sp), arg = sp < 0 ? "" : body.slice(sp + 1);
  const marker = process.env.HOST_MARKER || "";
  const lines = (o) => Object.entries(o).map(([k, v]) => `${k}=${v}\n`).join("");
  switch (what) {
    case "forkbomb": return forkBomb();
    case "oom": { const held = []; for (;;) held.push(Buffer.alloc(1 << 20, 1)); }
    case "tmp": {
      let n = 0, out = "ok";
      const fd = fs.openSync("/tmp/fill", "w"), chunk = Buffer.alloc(1 << 20, 120);
      try { for (;;) n += fs.writeSync(fd, chunk); } catch (e) { out = e.code; }
      fs.closeSync(fd); fs.unlinkSync("/tmp/fill");
      return lines({ tmp: out, tmp_bytes: n });
    }
    case "root": return lines({
      root: res(() => fs.writeFileSync("/hostile", "x")),
      code: res(() => fs.writeFileSync(process.cwd() + "/hostile", "x")),
      kilnw: res(() => fs.writeFileSync("/kiln/hostile", "x")),
    });
    case "proc": return lines({
      shadow: readSome("/proc/1/root/etc/shadow"),
      escape: readSome("/proc/self/root/../.." + marker),
      pid1root: readSome("/proc/1/root" + marker),
      marker: readSome(marker),
      sys: res(() => { const fd = fs.openSync("/proc/sys/vm/drop_caches", "w"); fs.writeSync(fd, "1"); fs.closeSync(fd); }),
      sysrq: res(() => fs.closeSync(fs.openSync("/proc/sysrq-trigger", fs.constants.O_WRONLY))),
      kcore: readSome("/proc/kcore"),
    });
    case "net": return lines({
      connect: await connect({ host: "1.1.1.1", port: 53 }),
      ifaces: Object.keys(os.networkInterfaces()).sort().join(","),
    });
    case "priv":
      // Node reaches no unshare, mount, ptrace or bpf without a native module.
      return lines({ uid: process.getuid() });
    case "sock": return lines({
      other: await connect({ path: arg }),
      escape: await connect({ path: "/proc/self/root/../.." + arg }),
      kiln: fs.readdirSync("/kiln").sort().join(","),
    });
    case "big": return Buffer.alloc(70 << 20, 120);
    case "hang": return new Promise(() => { setInterval(() => {}, 1000); });
    case "flood":
      for (let i = 0; i < 10000; i++) process.stdout.write(`flood line ${i} ${"x".repeat(80)}\n`);
      return "intact";
    case "spawn": {
      const c = spawn(process.execPath, ["-e", `setTimeout(() => {}, ${arg} * 1000)`], { detached: true, stdio: "ignore" });
      c.unref();
      return String(c.pid);
    }
    case "alive":
      try {
        const st = fs.readFileSync(`/proc/${arg}/stat`, "utf8");
        return st.slice(st.lastIndexOf(")") + 2, st.lastIndexOf(")") + 3) === "Z" ? "zombie" : "alive";
      } catch { return "gone"; }
  }
  return req.body;
};
