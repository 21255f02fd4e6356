require "rbconfig"
require "socket"

def res
  yield
  "ok"
rescue SystemCallError => e
  e.class.name.split("::").last
rescue => e
  e.message
end

def read_some(path)
  File.open(path, "rb") { |f| "read #{(f.read(4096) || "").bytesize}" }
rescue SystemCallError => e
  e.class.name.split("::").last
end

def lines(h)
  h.map { |k, v| "#{k}=#{v}\n" }.join
end

def fork_bomb
  kids = []
  begin
    while kids.size < 10000
      kids << fork { sleep 1000; exit! 0 }
    end
    "no limit met"
  rescue SystemCallError => e
    raise "fork bomb stopped after #{kids.size} children: #{e.class.name.split("::").last}"
  ensure
    kids.each { |pid| Process.kill(:KILL, pid); Process.wait(pid) }
  end
end

def ptrace_pid1
  syscall(101, 16, 1, 0, 0) # PTRACE_ATTACH
  Process.waitpid(1, 0x40000000) rescue nil # __WALL
  syscall(101, 17, 1, 0, 0) # PTRACE_DETACH
end

def handle(req)
  what, arg = req.body.split(" ", 2)
  marker = ENV.fetch("HOST_MARKER", "")
  case what
  when "forkbomb" then fork_bomb
  when "oom"
    held = []
    loop { held << "\x01" * (1 << 20) }
  when "tmp"
    n, out = 0, "ok"
    chunk = "x" * (1 << 20)
    File.open("/tmp/fill", "wb") do |f|
      f.sync = true
      loop { n += f.write(chunk) }
    rescue SystemCallError => e
      out = e.class.name.split("::").last
    end
    File.delete("/tmp/fill")
    lines(tmp: out, tmp_bytes: n)
  when "root"
    lines(root: res { File.write("/hostile", "x") }, code: res { File.write(Dir.pwd + "/hostile", "x") },
          kilnw: res { File.write("/kiln/hostile", "x") })
  when "proc"
    lines(shadow: read_some("/proc/1/root/etc/shadow"), escape: read_some("/proc/self/root/../.." + marker),
          pid1root: read_some("/proc/1/root" + marker), marker: read_some(marker),
          sys: res { File.open("/proc/sys/vm/drop_caches", "w") { |f| f.write("1") } },
          sysrq: res { File.open("/proc/sysrq-trigger", File::WRONLY).close },
          kcore: read_some("/proc/kcore"))
  when "net"
    lines(connect: res { Socket.tcp("1.1.1.1", 53, connect_timeout: 2).close },
          ifaces: Socket.getifaddrs.map(&:name).uniq.sort.join(","))
  when "priv"
    lines(uid: Process.uid,
          unshare: res { syscall(272, 0x10000000 | 0x00020000) },
          mount: res { syscall(165, "none", "/tmp", "tmpfs", 0, 0) },
          ptrace: res { ptrace_pid1 },
          # Ruby passes no buffer holding a NUL byte: a NULL attr, which
          # the kernel would refuse with EFAULT once past seccomp.
          bpf: res { syscall(321, 0, 0, 20) })
  when "sock"
    lines(other: res { UNIXSocket.new(arg).close }, escape: res { UNIXSocket.new("/proc/self/root/../.." + arg).close },
          kiln: Dir.children("/kiln").sort.join(","))
  when "big" then "x" * (70 << 20)
  when "hang" then loop { sleep 1 }
  when "flood"
    10000.times { |i| puts "flood line #{i} #{"x" * 80}" }
    "intact"
  when "spawn"
    pid = spawn(RbConfig.ruby, "-e", "sleep #{arg}", pgroup: true, close_others: true, in: :close, out: :close, err: :close)
    Process.detach(pid)
    pid.to_s
  when "alive"
    st = File.read("/proc/#{arg}/stat") rescue nil
    st.nil? ? "gone" : (st[st.rindex(")") + 2] == "Z" ? "zombie" : "alive")
  else req.body
  end
end
