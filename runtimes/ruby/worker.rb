# kiln's ruby worker: the ruby side of the executor's frame protocol.
#
# The executor (package executor/worker, whose doc comment is the protocol)
# runs this file with `ruby --disable-gems -e`: rubygems is not loaded (it
# would take the start from about 15 ms to 60 ms); a handler that needs it says
# `require "rubygems"`. Libraries installed as Debian packages (ruby-*)
# are on the load path without it. The worker reads frames from fd 3 and
# writes frames to fd 4; stdout (made unbuffered) and stderr are the
# function's logs. It uses the standard library only, and is ASCII only
# (the source of -e is read in the locale's encoding).
#
# The handler file is loaded with Kernel#load, its directory first on
# $LOAD_PATH and the code directory as the working directory. It defines a
# top-level method:
#
#     def handle(req) ... end
#
# req has:
#     body          String, binary (ASCII-8BIT)
#     headers       Hash of the request's headers, names as sent; when a
#                   name repeats, the last value
#     header_list   Array of [name, value], every header in order
#     method, path, query, id   String
#     deadline      Process.clock_gettime(Process::CLOCK_MONOTONIC) at
#                   which the caller gives up, or nil
#     cancelled?    true once the caller gave up on the call (the result
#                   is then dropped); cheap enough to poll in a loop
#     json          the body parsed as JSON
#
# handle returns:
#     String                     the body (its bytes as they are)
#     Hash or Array              the body as JSON, Content-Type application/json
#     nil                        an empty body
#     [status, headers, body]    a response: an Array of exactly three whose
#                                first element is an Integer and second a
#                                Hash (a value may be an Array: the header
#                                repeats), body any of the forms above.
#                                Any other Array is JSON; to send such a
#                                triple as JSON, wrap it: [200, {}, triple]
# with status 200 unless given. Anything else fails the call. An exception
# (any Exception, exit included) fails the call with status 500 and its
# message (or its class name when that is empty) as the error; its
# backtrace goes to stderr.
#
# Concurrency: with KILN_CONCURRENCY (after load's env) above 1, calls run
# on that many threads (the GVL lets one run Ruby code at a time: threads
# overlap in I/O and sleep); otherwise each call runs inline in the loop
# that reads frames, and req.cancelled? reads any frames already sent to
# notice a cancel.
#
# Each result carries the process's CPU time during the call (with threads,
# other calls' too) and its peak resident set, from getrusage(2) called
# through Fiddle, or from Process.times and /proc/self/status when Fiddle is
# missing.

require "json"

module Kiln
  IN_FD = 3
  OUT_FD = 4
  MAX_HEADER = 1 << 20
  MAX_BODY = 64 << 20
  SMALL_BODY = 32 << 10

  class ProtocolError < StandardError; end

  # Usage reads the process's resource usage: [user us, system us, max rss KiB].
  module Usage
    RUSAGE_SELF = 0
    RUSAGE_SIZE = 144 # struct rusage on 64-bit Linux: 2 timevals, 14 longs

    GETRUSAGE =
      begin
        raise LoadError, "not a 64-bit process" unless [0].pack("J").bytesize == 8
        require "fiddle"
        Fiddle::Function.new(Fiddle::Handle::DEFAULT["getrusage"],
                             [Fiddle::TYPE_INT, Fiddle::TYPE_VOIDP], Fiddle::TYPE_INT)
      rescue LoadError, StandardError
        nil
      end

    def self.now
      if GETRUSAGE
        buf = "\0".b * RUSAGE_SIZE
        if GETRUSAGE.call(RUSAGE_SELF, buf) == 0
          us, uu, ss, su, rss = buf.unpack("q5")
          return [us * 1_000_000 + uu, ss * 1_000_000 + su, rss]
        end
      end
      t = Process.times
      [(t.utime * 1e6).round, (t.stime * 1e6).round, peak_from_proc]
    end

    def self.peak_from_proc
      File.read("/proc/self/status")[/^VmHWM:\s*(\d+)/, 1].to_i
    rescue SystemCallError
      0
    end
  end

  class Request
    attr_reader :id, :method, :path, :query, :headers, :header_list, :body, :deadline

    def initialize(h, body, poll)
      @id = h["id"] || ""
      @method = h["method"] || ""
      @path = h["path"] || ""
      @query = h["query"] || ""
      @header_list = h["headers"] || []
      @headers = @header_list.to_h
      @body = body
      ms = h["deadline_ms"] || 0
      @deadline = ms > 0 ? Process.clock_gettime(Process::CLOCK_MONOTONIC) + ms / 1000.0 : nil
      @cancelled = false
      @poll = poll
    end

    def cancelled?
      @poll.call(self) if !@cancelled && @poll
      @cancelled
    end

    # cancel! marks the call cancelled: its result is not sent.
    def cancel!
      @cancelled = true
    end

    # dropped? is whether the call is marked cancelled, without polling.
    def dropped?
      @cancelled
    end

    def json
      JSON.parse(@body)
    end

    def inspect
      "#<Kiln::Request #{@id} #{@method} #{@path}?#{@query}>"
    end
  end

  # utf8 returns s as valid UTF-8, for a frame's JSON header.
  def self.utf8(s)
    s = s.to_s
    return s if s.encoding == Encoding::UTF_8 && s.valid_encoding?
    s = s.dup.force_encoding(Encoding::UTF_8)
    s.valid_encoding? ? s : s.scrub
  end

  def self.body(v, headers)
    case v
    when nil then "".b
    when String then v
    when Hash, Array
      unless headers.any? { |k, _| k.casecmp?("content-type") }
        headers << ["Content-Type", "application/json"]
      end
      JSON.generate(v)
    else
      raise TypeError, "handler returned a #{v.class}; want String, Hash, Array, nil or [status, headers, body]"
    end
  end

  # answer returns [status, headers, body] for what handle returned.
  def self.answer(v)
    status = 200
    headers = []
    if v.is_a?(Array) && v.size == 3 && v[0].is_a?(Integer) && v[1].is_a?(Hash)
      status, given, v = v
      given.each do |k, x|
        if x.is_a?(Array)
          x.each { |y| headers << [utf8(k), utf8(y)] }
        else
          headers << [utf8(k), utf8(x)]
        end
      end
    end
    [status, headers, body(v, headers)]
  end

  def self.message(e)
    m = e.message.to_s
    m.empty? ? e.class.name : utf8(m)
  end

  class Worker
    def initialize
      @in = IO.for_fd(IN_FD, "rb", autoclose: false)
      @out = IO.for_fd(OUT_FD, "wb", autoclose: false)
      [@in, @out].each { |io| io.close_on_exec = true } # not handed to the handler's children
      @out.sync = true
      @out_lock = Mutex.new
      @ahead = [] # frames read while polling for a cancel, in order
      @eof = false
      @handler = nil
      @queue = nil # the calls for the threads, with KILN_CONCURRENCY > 1
      @inflight = {} # id => Request, for the calls run on the threads
      @inflight_lock = Mutex.new # guards @inflight
      @poll_inline = method(:poll_inline)
    end

    def read_exact(n)
      return "".b if n == 0
      s = @in.read(n)
      return nil if s.nil?
      raise ProtocolError, "truncated frame" if s.bytesize < n
      s
    end

    # read_frame returns [header, body], or nil at the end of fd 3.
    def read_frame
      prefix = read_exact(8) or return nil
      hl, bl = prefix.unpack("NN")
      raise ProtocolError, "frame of #{hl}+#{bl} bytes is over the limits" if hl > MAX_HEADER || bl > MAX_BODY
      header = read_exact(hl) or raise ProtocolError, "truncated frame"
      body = read_exact(bl) or raise ProtocolError, "truncated frame"
      [JSON.parse(header.force_encoding(Encoding::UTF_8)), body]
    end

    def next_frame
      return @ahead.shift unless @ahead.empty?
      return nil if @eof
      read_frame
    end

    # poll_inline is req.cancelled? of an inline call: it reads the frames
    # already sent, applying cancels and keeping the rest for the loop.
    def poll_inline(req)
      while !@eof && IO.select([@in], nil, nil, 0)
        frame = read_frame
        if frame.nil?
          @eof = true # the executor is gone: nothing will take the result
          req.cancel!
        elsif frame[0]["t"] == "cancel" && frame[0]["id"] == req.id
          req.cancel!
        else
          @ahead << frame
        end
      end
    end

    def send_frame(header, body = "".b)
      h = JSON.generate(header)
      prefix = [h.bytesize, body.bytesize].pack("NN")
      @out_lock.synchronize do
        if body.bytesize <= SMALL_BODY
          @out.write(prefix, h, body)
        else
          @out.write(prefix, h)
          @out.write(body)
        end
      end
    end

    def load_handler(h)
      (h["env"] || {}).each { |k, v| ENV[k.to_s] = v.to_s }
      dir = h["dir"] || "."
      path = File.expand_path(h["handler"], dir)
      Dir.chdir(dir)
      $LOAD_PATH.unshift(File.dirname(path))
      Kernel.load(path)
      main = TOPLEVEL_BINDING.receiver
      raise TypeError, "#{h["handler"]} defines no method handle(req)" unless main.respond_to?(:handle, true)
      @handler = main.method(:handle)
      n = Integer(ENV.fetch("KILN_CONCURRENCY", "1"), exception: false) || 1
      return if n <= 1
      @queue = Thread::Queue.new
      n.times do |i|
        Thread.new do
          Thread.current.name = "kiln-call-#{i}"
          while (req = @queue.pop)
            run_pooled(req)
          end
        end
      end
    end

    # run runs one call and returns the result frame's header and body.
    def run(req)
      before = Usage.now
      begin
        status, headers, body = Kiln.answer(@handler.call(req))
        header = { "t" => "result", "id" => req.id, "status" => status, "headers" => headers, "error" => "" }
      rescue Exception => e # a handler's exit fails its call too
        $stderr.write("kiln: call #{req.id} failed: #{e.class}: #{e.message}\n\t#{(e.backtrace || []).join("\n\t")}\n")
        header = { "t" => "result", "id" => req.id, "status" => 500, "headers" => [], "error" => Kiln.message(e) }
        body = "".b
      end
      after = Usage.now
      header["cpu_user_us"] = after[0] - before[0]
      header["cpu_sys_us"] = after[1] - before[1]
      header["max_rss_kb"] = after[2]
      [header, body]
    end

    def run_pooled(req)
      header, body = run(req)
      live = @inflight_lock.synchronize { @inflight.delete(req.id) }
      send_frame(header, body) if live && !req.dropped?
    end

    def serve
      send_frame({ "t" => "ready", "version" => RUBY_VERSION })
      while (frame = next_frame)
        h, body = frame
        case h["t"]
        when "call"
          raise ProtocolError, "call before load" unless @handler
          if @queue
            req = Request.new(h, body, nil)
            @inflight_lock.synchronize { @inflight[req.id] = req }
            @queue << req
          else
            req = Request.new(h, body, @poll_inline)
            header, out = run(req)
            send_frame(header, out) unless req.dropped?
          end
        when "cancel"
          req = @inflight_lock.synchronize { @inflight[h["id"]] }
          req&.cancel!
        when "load"
          begin
            load_handler(h)
          rescue Exception => e
            $stderr.write("#{e.class}: #{e.message}\n\t#{(e.backtrace || []).join("\n\t")}\n")
            send_frame({ "t" => "load_error", "error" => Kiln.utf8("#{e.class}: #{e.message}") })
            next
          end
          send_frame({ "t" => "loaded" })
        end
      end
    end
  end
end

$stdout.sync = true
Encoding.default_external = Encoding::UTF_8 if Encoding.default_external == Encoding::US_ASCII
Kiln::Worker.new.serve
# fd 3 ended: the executor is gone. Calls still running on the threads
# would hold a normal exit; nothing can take their results.
Process.exit!(0)
