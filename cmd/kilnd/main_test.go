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
		{"stray arg", []string{"extra"}, "unexpected"},
		{"unknown flag", []string{"--nope"}, "not defined"},
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
