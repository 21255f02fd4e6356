package worker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kilnfx/kiln/runtimes/cpp"
)

// CppTestHandler is a C++ function answering, by path, every case of the
// tests of the cpp runtime.
const CppTestHandler = `#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <unistd.h>
#include "kiln.hpp"

kiln::Response handle(const kiln::Request& req) {
    const std::string& p = req.path;
    if (p == "/echo") {
        std::string all;
        for (const auto& h : req.headers) {
            if (h.first == "X-In") all += (all.empty() ? "" : ",") + h.second;
        }
        return kiln::Response{200, {{"X-Method", req.method}, {"X-Path", req.path}, {"X-Query", req.query},
                                    {"X-In", req.header("x-in")}, {"X-All", all}}, req.body};
    }
    if (p == "/headers") return kiln::Response{0, req.headers, req.method + " " + req.path + "?" + req.query};
    if (p == "/status") return kiln::Response{201, {{"X-T", "a"}, {"X-T", "b"}}, "made"};
    if (p == "/raise") throw std::runtime_error("bad thing");
    if (p == "/raise-other") throw 42;
    if (p == "/print") {
        for (int i = 0; i < 2000; i++) std::cout << std::string(1000, 'x') << "\n";
        std::cout.flush();
        return kiln::Response{200, {}, "intact"};
    }
    if (p == "/crash") std::_Exit(3);
    if (p == "/env") { const char* g = std::getenv("GREETING"); return kiln::Response{200, {}, g ? g : ""}; }
    if (p == "/cwd") { char buf[4096]; return kiln::Response{200, {}, getcwd(buf, sizeof buf) ? buf : "?"}; }
    if (p == "/pid") return kiln::Response{200, {}, std::to_string(getpid())};
    return kiln::Response{200, {}, "unknown"};
}

int main() { return kiln::serve(handle); }
`

var cppBuilt struct {
	sync.Mutex
	bins map[string][]byte // source → the binary cpp.Build made of it
}

// CompileCpp builds source as a C++ function with cpp.Build (the flags and
// SDK of kiln deploy) into a new code directory, and returns the directory
// and the handler, the binary's name in it. Binaries are kept for the
// test binary's life, so each source compiles once. Without g++ the test
// is skipped, or fails when CI is set.
func CompileCpp(t testing.TB, source string) (dir, handler string) {
	t.Helper()
	if _, err := exec.LookPath(cpp.Compiler); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (make setup installs it): %v", cpp.Compiler, err)
		}
		t.Skipf("%s is not installed: %v", cpp.Compiler, err)
	}
	cppBuilt.Lock()
	defer cppBuilt.Unlock()
	bin, ok := cppBuilt.bins[source]
	if !ok {
		src := t.TempDir()
		if err := os.WriteFile(filepath.Join(src, cpp.Source), []byte(source), 0o644); err != nil {
			t.Fatal(err)
		}
		path, err := cpp.Build(t.Context(), src)
		if err != nil {
			t.Fatal(err)
		}
		if bin, err = os.ReadFile(path); err != nil {
			t.Fatal(err)
		}
		if cppBuilt.bins == nil {
			cppBuilt.bins = make(map[string][]byte)
		}
		cppBuilt.bins[source] = bin
	}
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, cpp.Handler), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, cpp.Handler
}

// cppPeer is the executor's side of the frame protocol with a C++
// program, frames written by hand.
type cppPeer struct {
	cmd    *exec.Cmd
	to     *os.File
	from   *frameReader
	stderr bytes.Buffer
}

// startCpp starts the program dir/handler and reads its ready frame.
func startCpp(t testing.TB, dir, handler string) *cppPeer {
	t.Helper()
	toR, toW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fromR, fromW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &cppPeer{cmd: exec.Command(filepath.Join(dir, handler)), to: toW, from: newFrameReader(fromR)}
	p.cmd.ExtraFiles = []*os.File{toR, fromW}
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toR.Close()
	fromW.Close()
	t.Cleanup(func() {
		toW.Close()
		_ = p.cmd.Wait()
		fromR.Close()
	})
	if h, _, err := p.from.next(); err != nil || h.T != kindReady || !strings.HasPrefix(h.Version, "g++ ") {
		t.Fatalf("first frame %+v, %v; want ready with the compiler's version", h, err)
	}
	return p
}

// roundTrip sends a frame of header and body and returns the answer.
func (p *cppPeer) roundTrip(t testing.TB, header string, body []byte) (*workerHeader, []byte) {
	t.Helper()
	b := binary.BigEndian.AppendUint32(nil, uint32(len(header)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	b = append(append(b, header...), body...)
	if _, err := p.to.Write(b); err != nil {
		t.Fatalf("write: %v; stderr: %s", err, p.stderr.String())
	}
	h, rb, err := p.from.next()
	if err != nil {
		_ = p.cmd.Wait()
		t.Fatalf("read: %v; the program's stderr: %s", err, p.stderr.String())
	}
	return h, rb
}

// TestCppJSONReader sends call headers written by hand, with every kind of
// JSON value and escape, and checks what the handler was given.
func TestCppJSONReader(t *testing.T) {
	dir, handler := CompileCpp(t, CppTestHandler)
	p := startCpp(t, dir, handler)
	for _, tt := range []struct {
		name, header string
		want         [][2]string // the headers the handler got, echoed
	}{
		{"plain", `{"t":"call","id":"a","path":"/headers","headers":[["K","v"]]}`, [][2]string{{"K", "v"}}},
		{"escapes", `{"t":"call","id":"a","path":"/headers","headers":[["q","\"x\" \\ \/ \b\f\n\r\t"]]}`,
			[][2]string{{"q", "\"x\" \\ / \b\f\n\r\t"}}},
		{"unicode escapes", `{"t":"call","id":"a","path":"/headers","headers":[["u","\u00e9\u20AC\ud834\udd1e\u003c\u0001"]]}`,
			[][2]string{{"u", "é€𝄞<\x01"}}},
		{"lone surrogates", `{"t":"call","id":"a","path":"/headers","headers":[["s","\ud800x\udc00\ud800\u0041"]]}`,
			[][2]string{{"s", "\uFFFDx\uFFFD\uFFFDA"}}},
		{"raw UTF-8", `{"t":"call","id":"a","path":"/headers","headers":[["r","é€𝄞"]]}`, [][2]string{{"r", "é€𝄞"}}},
		{"other members", ` { "x" : [1, -2.5e3, true, false, null, {"y": {}}, []], "t" : "call", "id":"a", "path":"/headers",` +
			`"deadline_ms": 1200, "headers" : [ [ "K" , "v" ] , ["bad"], 7, ["K2","w"] ] } `,
			[][2]string{{"K", "v"}, {"K2", "w"}}},
		{"repeated member: the last wins", `{"t":"call","id":"a","path":"/nothing","path":"/headers","headers":[]}`, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := p.roundTrip(t, tt.header, nil)
			if h.T != kindResult || h.ID != "a" || h.Error != "" || len(h.Headers) != len(tt.want) {
				t.Fatalf("answer %+v, want a result with headers %q", h, tt.want)
			}
			for i, kv := range tt.want {
				if h.Headers[i] != kv {
					t.Errorf("header %d: %q, want %q", i, h.Headers[i], kv)
				}
			}
		})
	}

	// Frames the program must ignore, then a call to see it still serves.
	for _, header := range []string{`{"t":"cancel","id":"nobody"}`, `{"t":"future-kind"}`} {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(header)))
		b = binary.BigEndian.AppendUint32(b, 0)
		if _, err := p.to.Write(append(b, header...)); err != nil {
			t.Fatal(err)
		}
	}
	h, body := p.roundTrip(t, `{"t":"call","id":"m","method":"PUT","path":"/headers","query":"a=1&b"}`, nil)
	if h.ID != "m" || string(body) != "PUT /headers?a=1&b" {
		t.Errorf("after a cancel and an unknown kind: %+v %q", h, body)
	}
}

// TestCppJSONReaderRefuses checks that a header that is not JSON ends the
// program with the reason on stderr.
func TestCppJSONReaderRefuses(t *testing.T) {
	dir, handler := CompileCpp(t, CppTestHandler)
	for _, header := range []string{
		`{"t":"call","id":"a"`, `{"t":"call" "id":"a"}`, `{"t":"ca` + "\x01" + `ll"}`, `{"t":"\x"}`,
		`{"t":"\u12"}`, `{"n":01}`, `{"n":1.}`, `{"n":tru}`, `{"t":"call"} x`, `[]`, `"call"`,
		strings.Repeat("[", 100) + strings.Repeat("]", 100),
	} {
		p := startCpp(t, dir, handler)
		b := binary.BigEndian.AppendUint32(nil, uint32(len(header)))
		b = binary.BigEndian.AppendUint32(b, 0)
		if _, err := p.to.Write(append(b, header...)); err != nil {
			t.Fatal(err)
		}
		if h, _, err := p.from.next(); err == nil {
			t.Errorf("%s: answered %+v, want the program to exit", header, h)
		}
		err := p.cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(p.stderr.String(), "kiln worker: ") {
			t.Errorf("%s: exit %v, stderr %q; want exit status 1 with the reason", header, err, p.stderr.String())
		}
	}
}

// FuzzCppHeaderValues sends header names and values written by the
// executor's own encoder and checks that the handler got them as
// encoding/json reads them, and that the SDK's writer sends them back so.
func FuzzCppHeaderValues(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"uote\\", "\x00\x1f\x7f", "é€𝄞", "\xff\xfe bad", "\u2028<>&", `\u0041`} {
		f.Add(s)
	}
	dir, handler := CompileCpp(f, CppTestHandler)
	p := startCpp(f, dir, handler)
	f.Fuzz(func(t *testing.T, s string) {
		header := `{"t":"call","id":` + string(appendJSONString(nil, s)) + `,"path":"/headers","headers":[[` +
			string(appendJSONString(nil, s)) + `,"v"],["k",` + string(appendJSONString(nil, s)) + `]]}`
		var want string
		std, _ := json.Marshal(s) // each byte that is not UTF-8 becomes U+FFFD
		_ = json.Unmarshal(std, &want)
		h, _ := p.roundTrip(t, header, []byte(s))
		if h.ID != want || len(h.Headers) != 2 || h.Headers[0] != [2]string{want, "v"} || h.Headers[1] != [2]string{"k", want} {
			t.Fatalf("%q came back as %+v, want %q", s, h, want)
		}
	})
}
