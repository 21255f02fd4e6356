package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"defaults", nil, ""},
		{"bad http", []string{"--http", "nonsense"}, "--http"},
		{"bad grpc", []string{"--grpc", ":x:y"}, "--grpc"},
		{"empty data dir", []string{"--data-dir", ""}, "--data-dir"},
		{"bad body", []string{"--max-body", "0"}, "--max-body"},
		{"bad runtime", []string{"--runtime-binary", "docker"}, "--runtime-binary"},
		{"bad restarts", []string{"--containerd-restarts", "-1"}, "--containerd-restarts"},
		{"stray arg", []string{"extra"}, "unexpected"},
		{"unknown flag", []string{"--nope"}, "not defined"},
		{"no connections", []string{"--max-conns", "0"}, "--max-conns"},
		{"no connections per IP", []string{"--max-conns-per-ip", "-1"}, "--max-conns-per-ip"},
		{"no header time", []string{"--header-timeout", "0s"}, "--header-timeout"},
		{"negative body time", []string{"--body-timeout", "-1s"}, "--body-timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			c, err := parseFlags(tt.args, &out)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.httpAddr != "127.0.0.1:8080" || c.grpcAddr != "127.0.0.1:9090" || c.dataDir != "/var/lib/kiln" || c.containerd != "" {
					t.Errorf("defaults = %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseBudget(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"1024", 1024, true}, {"512Mi", 512 << 20, true}, {"2G", 2e9, true}, {"1Gi", 1 << 30, true},
		{"-1", 0, false}, {"lots", 0, false}, {"150%", 0, false}, {"0%", 0, false}, {"9999999999Ti", 0, false},
	} {
		got, err := parseBudget(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("parseBudget(%q) = %d, %v", tt.in, got, err)
		}
	}
	if got, err := parseBudget("75%"); err != nil || got <= 0 {
		t.Errorf("75%% = %d, %v", got, err)
	}
}

func TestParseStemCells(t *testing.T) {
	if m, err := parseStemCells("go=2"); err != nil || m["go"] != 2 {
		t.Errorf("go=2: %v %v", m, err)
	}
	if m, err := parseStemCells(""); err != nil || len(m) != 0 {
		t.Errorf("empty: %v %v", m, err)
	}
	for _, bad := range []string{"go", "go=x", "go=-1", "go=1000", "cobol=1", "go=1,go=2"} {
		if _, err := parseStemCells(bad); err == nil {
			t.Errorf("parseStemCells(%q) accepted", bad)
		}
	}
}

func TestParseGOMAXPROCS(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--gomaxprocs", "-2"}, &out); err == nil {
		t.Error("--gomaxprocs -2 accepted")
	}
	if c, err := parseFlags([]string{"--gomaxprocs", "3"}, &out); err != nil || c.gomaxprocs != 3 {
		t.Errorf("--gomaxprocs 3: %v %v", c.gomaxprocs, err)
	}
}

func TestConnBudget(t *testing.T) {
	for _, tt := range []struct {
		want   int
		nofile uint64
		got    int
	}{
		{4096, 1 << 20, 4096}, {4096, 20000, 4096}, {4096, 1024, 256}, {100, 1024, 100}, {4096, 2, 1},
	} {
		if got := connBudget(tt.want, tt.nofile); got != tt.got {
			t.Errorf("connBudget(%d, %d) = %d, want %d", tt.want, tt.nofile, got, tt.got)
		}
	}
}
