package api

import (
	"bytes"
	"fmt"

	"github.com/kilnfx/kiln/agent"
)

// gate decides who a request comes from, the same way on the HTTP and the
// gRPC edge. The admin token grants the management API; with required
// unset a request with no credentials is admitted as the admin, which is
// only safe on loopback.
type gate struct {
	agent      *agent.Agent
	adminToken string
	required   bool
}

// caller is who a management request comes from: the admin, or a tenant.
type caller struct {
	admin  bool
	tenant string
}

// scopeTenant is the one tenant-scoping rule of usage and call records: it
// returns the tenant whose records a query by c may read when it asks for
// asked ("" for every tenant). The admin reads what it asks; a tenant reads
// only its own, and asking for another tenant is an ErrUnauthenticated.
func (c caller) scopeTenant(asked string) (string, error) {
	if c.admin {
		return asked, nil
	}
	if asked != "" && asked != c.tenant {
		return "", fmt.Errorf("%w: a tenant's key sees only its own usage and calls", agent.ErrUnauthenticated)
	}
	return c.tenant, nil
}

// mayRead reports whether c may read a record billed to tenant, by the
// rule of scopeTenant.
func (c caller) mayRead(tenant string) bool { return c.admin || tenant == c.tenant }

// identify authenticates the bearer credential tok ("" when none was
// given). Errors wrap agent.ErrUnauthenticated.
func (g gate) identify(tok string) (caller, error) {
	switch {
	case tok == "" && !g.required:
		return caller{admin: true}, nil
	case tok == "":
		return caller{}, fmt.Errorf("%w: this API needs a token (Authorization: Bearer TOKEN): the admin token, in %s on the agent's host (readable by root; the kiln CLI run as root finds it), or for usage and calls a tenant's API key", agent.ErrUnauthenticated, g.agent.AdminTokenPath())
	case g.adminToken != "" && agent.TokenEqual(tok, g.adminToken):
		return caller{admin: true}, nil
	}
	tenant, err := g.agent.Authenticate(tok)
	if err != nil {
		return caller{}, err
	}
	return caller{tenant: tenant}, nil
}

// requireAdmin admits only the admin.
func (g gate) requireAdmin(tok string) error {
	c, err := g.identify(tok)
	if err == nil && !c.admin {
		err = fmt.Errorf("%w: this API needs the admin token (in %s on the agent's host), not a tenant's key", agent.ErrUnauthenticated, g.agent.AdminTokenPath())
	}
	return err
}

// admitsAdmin reports whether identify would admit a request whose
// Authorization header value is auth as the admin. It looks up no tenant
// key (a tenant is never the admin) and does not allocate, for fasthttp's
// HeaderReceived hook. It must agree with identify
// (TestGateAdmitsAdmin).
func (g gate) admitsAdmin(auth []byte) bool {
	tok := bearerBytes(auth)
	if len(tok) == 0 {
		return !g.required
	}
	return g.adminToken != "" && tokenEqual(tok, g.adminToken)
}

// bearerBytes returns the credential of an "Authorization: Bearer X" value,
// as bearer does, or nil.
func bearerBytes(auth []byte) []byte {
	if len(auth) > 7 && bytes.EqualFold(auth[:7], []byte("bearer ")) {
		return bytes.TrimSpace(auth[7:])
	}
	return nil
}

// tokenEqual is agent.TokenEqual on a token still in a request's bytes:
// its time depends on the lengths only, and it does not allocate.
func tokenEqual(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	var d byte
	for i := range len(b) {
		d |= b[i] ^ s[i]
	}
	return d == 0
}

// apiKey returns the tenant API key a call presents in tok, or "". The
// admin token is no tenant's key: a call with it is anonymous.
func (g gate) apiKey(tok string) string {
	if g.adminToken != "" && agent.TokenEqual(tok, g.adminToken) {
		return ""
	}
	return tok
}
