package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// agentInfoFile is the name, in an agent's data directory, of the file in
// which kilnd records the addresses it serves (agent.InfoFile).
const agentInfoFile = "agent.json"

// envDataDir names the environment variable that, like --data-dir, names
// the data directory of the agent to call.
const envDataDir = "KILN_DATA_DIR"

// agentInfo is what kilnd records in DATA_DIR/agent.json, so that a data
// directory says which agent it, and its admin token, belong to.
type agentInfo struct {
	// HTTP is the agent's HTTP API as a URL, GRPC its gRPC address.
	HTTP string `json:"http"`
	GRPC string `json:"grpc"`
}

// readAgentInfo reads dataDir's agent.json.
func readAgentInfo(dataDir string) (agentInfo, error) {
	var ai agentInfo
	b, err := os.ReadFile(filepath.Join(dataDir, agentInfoFile))
	if err != nil {
		return ai, err
	}
	if err := json.Unmarshal(b, &ai); err != nil {
		return ai, fmt.Errorf("%s: %w", filepath.Join(dataDir, agentInfoFile), err)
	}
	return ai, nil
}

// explicitDataDir returns --data-dir when it was given on the command
// line, else $KILN_DATA_DIR when set.
func (c *cli) explicitDataDir(cmd *cobra.Command) (string, bool) {
	if f := cmd.Flag("data-dir"); f != nil && f.Changed {
		return c.dataDir, true
	}
	if v := c.getenv(envDataDir); v != "" {
		return v, true
	}
	return "", false
}

// tokenFileFor returns the admin token file to read for the agent at
// agentURL, or "" and why none fits. An explicit --data-dir is the user
// naming the agent's directory. The default one is used only when its
// agent.json names agentURL (or, when it has none, agentURL is the
// default): another agent's token is never sent.
func (c *cli) tokenFileFor(cmd *cobra.Command, agentURL string) (path, why string) {
	if dir, ok := c.explicitDataDir(cmd); ok {
		return filepath.Join(dir, adminTokenFile), ""
	}
	dir := c.dataDir // the default, unless a test set another
	ai, err := readAgentInfo(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if sameAgent(defaultAgent, agentURL) {
			return filepath.Join(dir, adminTokenFile), ""
		}
		return "", fmt.Sprintf("the admin token in %s is for the agent at %s, not %s", dir, defaultAgent, agentURL)
	case err != nil:
		return "", err.Error()
	case !sameAgent(ai.HTTP, agentURL):
		return "", fmt.Sprintf("the admin token in %s belongs to the agent at %s, not %s", dir, ai.HTTP, agentURL)
	}
	return filepath.Join(dir, adminTokenFile), ""
}

// sameAgent reports whether the agent URL recorded by kilnd and the URL
// the CLI calls name the same listener: the same port, and the same host,
// or a loopback host for an agent listening on every address.
func sameAgent(recorded, target string) bool {
	r, err1 := url.Parse(recorded)
	t, err2 := url.Parse(target)
	if err1 != nil || err2 != nil || r.Port() != t.Port() {
		return false
	}
	rh, th := canonicalHost(r.Hostname()), canonicalHost(t.Hostname())
	if rh == th {
		return true
	}
	rip, tip := net.ParseIP(rh), net.ParseIP(th)
	return rip != nil && rip.IsUnspecified() && tip != nil && tip.IsLoopback()
}

func canonicalHost(h string) string {
	if strings.EqualFold(h, "localhost") {
		return "127.0.0.1"
	}
	if ip := net.ParseIP(h); ip != nil {
		return ip.String()
	}
	return strings.ToLower(h)
}
