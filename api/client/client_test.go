package client

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// fakeAPI is an in-memory kiln HTTP API.
type fakeAPI struct {
	mu    sync.Mutex
	fns   map[string]*kilnv1.Function
	order []string
	// last request seen
	lastHeader http.Header
	lastBody   []byte
}

func newFakeAPI(t *testing.T) (*fakeAPI, *httptest.Server) {
	f := &fakeAPI{fns: map[string]*kilnv1.Function{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

var marshal = protojson.MarshalOptions{UseProtoNames: true}

func writeError(w http.ResponseWriter, status int, class, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(wire.HeaderError, class)
	w.WriteHeader(status)
	b, _ := marshal.Marshal(&kilnv1.Error{Error: msg, Class: class})
	w.Write(b)
}

func writeJSON(w http.ResponseWriter, m proto.Message) {
	w.Header().Set("Content-Type", "application/json")
	b, _ := marshal.Marshal(m)
	w.Write(b)
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	f.lastHeader, f.lastBody = r.Header.Clone(), body
	switch {
	case r.URL.Path == "/v1/functions" && r.Method == http.MethodGet:
		list := &kilnv1.FunctionList{}
		for _, n := range f.order {
			list.Functions = append(list.Functions, f.fns[n])
		}
		writeJSON(w, list)
	case strings.HasPrefix(r.URL.Path, "/v1/functions/"):
		name := strings.TrimPrefix(r.URL.Path, "/v1/functions/")
		switch r.Method {
		case http.MethodPut:
			spec := new(kilnv1.FunctionSpec)
			if err := protojson.Unmarshal(body, spec); err != nil {
				writeError(w, http.StatusBadRequest, wire.ClassInvalidArgument, err.Error())
				return
			}
			if len(spec.Code) == 0 {
				writeError(w, http.StatusBadRequest, wire.ClassInvalidArgument, "spec.code: missing")
				return
			}
			if _, ok := f.fns[name]; !ok {
				f.order = append(f.order, name)
			}
			fn := &kilnv1.Function{Name: name, Spec: spec, Revision: "r1", Created: timestamppb.New(time.Unix(1, 0)), Updated: timestamppb.New(time.Unix(2, 0))}
			f.fns[name] = fn
			writeJSON(w, fn)
		case http.MethodGet:
			fn, ok := f.fns[name]
			if !ok {
				writeError(w, http.StatusNotFound, wire.ClassNotFound, "function "+name+" not found")
				return
			}
			writeJSON(w, fn)
		case http.MethodDelete:
			if _, ok := f.fns[name]; !ok {
				writeError(w, http.StatusNotFound, wire.ClassNotFound, "function "+name+" not found")
				return
			}
			delete(f.fns, name)
			w.WriteHeader(http.StatusNoContent)
		}
	case strings.HasPrefix(r.URL.Path, "/invoke/"):
		name := strings.TrimPrefix(r.URL.Path, "/invoke/")
		switch name {
		case "echo":
			w.Header().Set("X-Handler", "echo")
			w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
			w.Write(body)
		case "teapot":
			w.WriteHeader(http.StatusTeapot)
			w.Write([]byte("short and stout"))
		case "fails":
			w.Header().Set(wire.HeaderError, wire.ClassFunctionError)
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte("boom"))
		case "busy":
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusTooManyRequests, wire.ClassResourceExhausted, "too many calls")
		case "proxy":
			w.Header().Set(wire.HeaderError, wire.ClassUnavailable)
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("<html>bad gateway</html>"))
		default:
			writeError(w, http.StatusNotFound, wire.ClassNotFound, "function "+name+" not found")
		}
	default:
		http.NotFound(w, r)
	}
}

func TestNew(t *testing.T) {
	for _, bad := range []string{"", "127.0.0.1:8080", "ftp://x", "http://", "http://h/?a=b", "http://u:p@h", "http://h/#f", "://"} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%q) succeeded", bad)
		}
	}
	for _, ok := range []string{"http://127.0.0.1:8080", "https://kiln.example/", "http://h/prefix/"} {
		if _, err := New(ok); err != nil {
			t.Errorf("New(%q) = %v", ok, err)
		}
	}
}

func TestManagement(t *testing.T) {
	api, srv := newFakeAPI(t)
	c, err := New(srv.URL, WithToken("secret"), WithUserAgent("test/1"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	spec := &kilnv1.FunctionSpec{Runtime: "go", Code: []byte("archive"), MemoryMb: 128, Timeout: durationpb.New(30 * time.Second)}
	fn, err := c.Deploy(ctx, "hello", spec)
	if err != nil {
		t.Fatal(err)
	}
	if fn.Name != "hello" || fn.Revision != "r1" || !proto.Equal(fn.Spec, spec) {
		t.Errorf("Deploy = %v", fn)
	}
	if got := api.lastHeader.Get("Authorization"); got != "Bearer secret" {
		t.Errorf("Authorization = %q", got)
	}
	if got := api.lastHeader.Get("User-Agent"); got != "test/1" {
		t.Errorf("User-Agent = %q", got)
	}
	if got := api.lastHeader.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q", got)
	}
	// The body uses the proto field names and durations as strings.
	for _, want := range []string{`"memory_mb":`, `"timeout":"30s"`} {
		if !strings.Contains(strings.ReplaceAll(string(api.lastBody), " ", ""), want) {
			t.Errorf("deploy body %s lacks %s", api.lastBody, want)
		}
	}

	got, err := c.Get(ctx, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, fn) {
		t.Errorf("Get = %v, want %v", got, fn)
	}

	if _, err := c.Deploy(ctx, "world", &kilnv1.FunctionSpec{Runtime: "go", Code: []byte("archive")}); err != nil {
		t.Fatal(err)
	}
	list, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "hello" || list[1].Name != "world" {
		t.Errorf("List = %v", list)
	}

	if err := c.Delete(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(ctx, "hello")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound || apiErr.Class != wire.ClassNotFound || apiErr.Message != "function hello not found" {
		t.Fatalf("Get of a deleted function = %#v", err)
	}
	if err := c.Delete(ctx, "hello"); !errors.As(err, &apiErr) || apiErr.Class != wire.ClassNotFound {
		t.Fatalf("Delete of a deleted function = %v", err)
	}
	if _, err := c.Deploy(ctx, "bad", &kilnv1.FunctionSpec{}); !errors.As(err, &apiErr) || apiErr.Class != wire.ClassInvalidArgument {
		t.Fatalf("Deploy of an invalid spec = %v", err)
	}
	if _, err := c.Deploy(ctx, "bad", nil); err == nil {
		t.Fatal("Deploy of a nil spec succeeded")
	}
}

func TestInvalidName(t *testing.T) {
	c, err := New("http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"", "Hello", "../v1/functions", "a/b", "a?b"} {
		if _, err := c.Get(ctx, name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Get(%q) = %v", name, err)
		}
		if _, err := c.Deploy(ctx, name, &kilnv1.FunctionSpec{}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Deploy(%q) = %v", name, err)
		}
		if err := c.Delete(ctx, name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Delete(%q) = %v", name, err)
		}
		if _, err := c.Invoke(ctx, name, nil, nil); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Invoke(%q) = %v", name, err)
		}
	}
}

func TestInvoke(t *testing.T) {
	api, srv := newFakeAPI(t)
	c, err := New(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	res, err := c.Invoke(ctx, "echo", []byte("hi"), http.Header{"Content-Type": {"text/plain"}, "X-A": {"1", "2"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != http.StatusOK || string(res.Body) != "hi" || res.FunctionError || res.Header.Get("X-Handler") != "echo" || res.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("Invoke(echo) = %+v", res)
	}
	if got := api.lastHeader.Values("X-A"); len(got) != 2 {
		t.Errorf("X-A sent as %v", got)
	}

	// A function's own error status is its answer, not an error.
	res, err = c.Invoke(ctx, "teapot", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != http.StatusTeapot || res.FunctionError || string(res.Body) != "short and stout" {
		t.Errorf("Invoke(teapot) = %+v", res)
	}

	res, err = c.Invoke(ctx, "fails", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != http.StatusInternalServerError || !res.FunctionError || string(res.Body) != "boom" {
		t.Errorf("Invoke(fails) = %+v", res)
	}

	tests := []struct {
		name   string
		status int
		class  string
		msg    string
	}{
		{"missing", http.StatusNotFound, wire.ClassNotFound, "function missing not found"},
		{"busy", http.StatusTooManyRequests, wire.ClassResourceExhausted, "too many calls"},
		{"proxy", http.StatusBadGateway, wire.ClassUnavailable, "<html>bad gateway</html>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Invoke(ctx, tt.name, nil, nil)
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("Invoke = %+v, %v; want an *APIError", res, err)
			}
			if apiErr.Status != tt.status || apiErr.Class != tt.class || apiErr.Message != tt.msg {
				t.Errorf("Invoke error = %#v", apiErr)
			}
			if !strings.Contains(apiErr.Error(), tt.class) {
				t.Errorf("Error() = %q lacks the class", apiErr.Error())
			}
		})
	}
}

func TestBasePathPrefix(t *testing.T) {
	var gotPath string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath = r.URL.Path
		writeJSON(w, &kilnv1.FunctionList{})
	}))
	defer srv.Close()
	c, err := New(srv.URL + "/kiln/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	if gotPath != "/kiln/v1/functions" {
		t.Errorf("path = %q", gotPath)
	}
}

func TestBadAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/functions":
			w.Write([]byte("not json"))
		case "/v1/functions/plain":
			http.Error(w, "upstream exploded", http.StatusServiceUnavailable)
		case "/v1/functions/empty":
			w.WriteHeader(http.StatusInternalServerError)
		default:
			// Unknown fields from a newer agent are ignored.
			w.Write([]byte(`{"name":"new","revision":"r9","future_field":1}`))
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.List(ctx); err == nil || !strings.Contains(err.Error(), "decoding") {
		t.Errorf("List of a non-JSON answer = %v", err)
	}
	var apiErr *APIError
	if _, err := c.Get(ctx, "plain"); !errors.As(err, &apiErr) || apiErr.Status != 503 || apiErr.Message != "upstream exploded" || apiErr.Class != "" {
		t.Errorf("Get(plain) = %#v", err)
	}
	if _, err := c.Get(ctx, "empty"); !errors.As(err, &apiErr) || apiErr.Error() != "Internal Server Error (HTTP 500)" {
		t.Errorf("Get(empty) = %v", err)
	}
	fn, err := c.Get(ctx, "new")
	if err != nil || fn.Revision != "r9" {
		t.Errorf("Get(new) = %v, %v", fn, err)
	}
}

func TestContextCancel(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Invoke(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Invoke = %v, want DeadlineExceeded", err)
	}
}
