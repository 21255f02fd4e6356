package api

import (
	"errors"
	"testing"

	"github.com/kilnfx/kiln/agent"
)

func TestTenantScope(t *testing.T) {
	admin, acme := caller{admin: true}, caller{tenant: "acme"}
	for _, tt := range []struct {
		who         caller
		asked, want string
		refused     bool
	}{
		{admin, "", "", false}, {admin, "globex", "globex", false},
		{acme, "", "acme", false}, {acme, "acme", "acme", false}, {acme, "globex", "", true},
	} {
		got, err := tt.who.scopeTenant(tt.asked)
		if got != tt.want || (err != nil) != tt.refused || (err != nil && !errors.Is(err, agent.ErrUnauthenticated)) {
			t.Errorf("%+v.scopeTenant(%q) = %q, %v", tt.who, tt.asked, got, err)
		}
	}
	if !admin.mayRead("x") || !acme.mayRead("acme") || acme.mayRead("globex") || acme.mayRead("") {
		t.Error("mayRead does not follow scopeTenant's rule")
	}
}
