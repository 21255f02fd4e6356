package api

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/errdefs"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// TestErrorClassesAreTheWireClasses checks that the classes the edges
// answer with are exactly wire's: every row of the table, the fallback and
// the function's failure, each once.
func TestErrorClassesAreTheWireClasses(t *testing.T) {
	var got []string
	for _, c := range errdefs.Classes() {
		got = append(got, c.Name)
	}
	want := wire.Classes()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the edges answer the classes %v, wire names %v", got, want)
	}
	if agent.ClassFunctionError != wire.ClassFunctionError {
		t.Errorf("agent records %q for a function's failure, the edges answer %q", agent.ClassFunctionError, wire.ClassFunctionError)
	}
}

// TestGRPCErrorCarriesTheClass checks that every class reaches a gRPC
// client in a kiln.v1.Error detail, beside the code of its class.
func TestGRPCErrorCarriesTheClass(t *testing.T) {
	cases := []struct {
		err   error
		class string
		code  codes.Code
	}{{errors.New("boom"), wire.ClassInternal, codes.Internal}}
	for _, c := range errdefs.Classes() {
		if c.Err == errdefs.ErrInternal || c.Err == errdefs.ErrFunction {
			continue // answered as the function's own status, or above
		}
		cases = append(cases, struct {
			err   error
			class string
			code  codes.Code
		}{fmt.Errorf("%w: details", c.Err), c.Name, c.GRPC})
	}
	for _, tt := range cases {
		st := status.Convert(grpcError(tt.err))
		if st.Code() != tt.code || st.Message() != tt.err.Error() {
			t.Errorf("%v: status %v %q", tt.err, st.Code(), st.Message())
		}
		d := st.Details()
		if len(d) != 1 {
			t.Errorf("%v: details %v", tt.err, d)
			continue
		}
		if e, ok := d[0].(*kilnv1.Error); !ok || e.Class != tt.class {
			t.Errorf("%v: detail %v, want class %s", tt.err, d[0], tt.class)
		}
	}
	if grpcError(nil) != nil {
		t.Error("grpcError(nil) is not nil")
	}
}
