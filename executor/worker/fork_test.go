package worker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/kilnfx/kiln/executor/worker"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// handlerSh is a binary function: it echoes stdin, prints its Http_*
// environment, or fails with a long stderr, by path.
const handlerSh = `#!/bin/sh
case "$Http_Path" in
/fail)
  i=0
  while [ $i -lt 200 ]; do echo "noise line $i of the failing program"; i=$((i+1)); done >&2
  echo "the real reason" >&2
  exit 2 ;;
/env) printf '%s|%s|%s|%s|%s|%s' "$Http_Method" "$Http_Query" "$Http_Content_Type" "$Http_X_Custom_Header" "$GREETING" "$(pwd)" ;;
/sleep) sleep 10 ;;
/burn) i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done ;;
/alloc) awk 'BEGIN { s = "x"; while (length(s) < 50000000) s = s s; print length(s) }' ;;
*) cat ;;
esac
`

func TestBinary(t *testing.T) {
	requireCommand(t, "sh")
	a := newAgent(t)
	dir := codeDir(t, map[string]string{"handler.sh": handlerSh})
	r := a.serve(t, worker.Config{Runtime: "binary", Function: "hello", CodeDir: dir, Handler: "handler.sh", Env: []string{"PATH=/usr/bin:/bin", "GREETING=hi"}})
	s := a.session(t, r)
	t.Cleanup(s.close)
	if s.ready.Runtime != "binary" || s.ready.Function != "hello" {
		t.Errorf("Ready = %v", s.ready)
	}
	if res := s.call(t, "echo", "/", "body\x00on stdin"); res.Status != 200 || string(res.Body) != "body\x00on stdin" || res.Error != "" {
		t.Errorf("echo: %v", res)
	}
	s.invoke(t, &pb.Invoke{CallId: "env", Method: "PATCH", Path: "/env", Query: "a=1",
		Headers: []*pb.Header{{Key: "content-type", Value: "text/plain"}, {Key: "X-Custom-Header", Value: "v1"}, {Key: "X-Custom-Header", Value: "v2"}}})
	if res := s.result(t, "env"); string(res.Body) != "PATCH|a=1|text/plain|v1, v2|hi|"+dir {
		t.Errorf("env: %q", res.Body)
	}
	res := s.call(t, "fail", "/fail", "")
	if res.Status != 500 || !strings.HasSuffix(res.Error, "the real reason") || len(res.Error) > 4096 || strings.Contains(res.Error, "line 0 ") {
		t.Errorf("fail: status %d, error of %d bytes ending %q", res.Status, len(res.Error), res.Error[max(0, len(res.Error)-40):])
	}
	if !strings.Contains(r.logs.String(), "noise line 0 of") {
		t.Error("the whole stderr did not reach the logs")
	}
	// The program's CPU and memory are the call's.
	if res := s.call(t, "burn", "/burn", ""); res.Status != 200 || res.CpuUserNs < int64(50*time.Millisecond) {
		t.Errorf("a program burning CPU: status %d, cpu %v user %v system", res.Status, time.Duration(res.CpuUserNs), time.Duration(res.CpuSysNs))
	}
	if res := s.call(t, "alloc", "/alloc", ""); strings.TrimSpace(string(res.Body)) != "67108864" || res.MaxRssBytes < 40<<20 {
		t.Errorf("a program allocating 50 MB: %q, max rss %d bytes", res.Body, res.MaxRssBytes)
	}
	s.invoke(t, &pb.Invoke{CallId: "sleep", Path: "/sleep"})
	s.cancel(t, "sleep")
	if res := s.result(t, "sleep"); res.Error != "context canceled" {
		t.Errorf("cancelled: %v", res)
	}
}

func TestBinaryStem(t *testing.T) {
	requireCommand(t, "sh")
	a := newAgent(t)
	r := a.serve(t, worker.Config{Runtime: "binary"})
	s := a.session(t, r)
	if s.ready.Function != "" || s.ready.Runtime != "binary" {
		t.Errorf("stem Ready = %v", s.ready)
	}
	dir := codeDir(t, map[string]string{"handler.sh": handlerSh})
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Init{Init: &pb.Init{Function: "hello", CodePath: dir, Handler: "handler.sh", Env: map[string]string{"GREETING": "from init"}}}})
	s.close()
	s = a.session(t, r)
	t.Cleanup(s.close)
	if s.ready.Function != "hello" {
		t.Errorf("Ready after Init = %v", s.ready)
	}
	if res := s.call(t, "env", "/env", ""); !strings.Contains(string(res.Body), "|from init|") {
		t.Errorf("env: %q", res.Body)
	}
}
