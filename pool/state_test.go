package pool

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"strings"
	"testing"
)

// edge is a move from one state to another.
type edge struct{ from, to State }

func (e edge) String() string { return e.from.String() + " → " + e.to.String() }

// TestStateDiagram checks that the drawing in State's doc comment and the
// table transitions say the same: every edge drawn is in the table and
// every edge of the table is drawn.
func TestStateDiagram(t *testing.T) {
	drawing := stateDrawing(t)
	drawn, err := diagramEdges(drawing)
	if err != nil {
		t.Fatalf("reading the drawing in state.go: %v", err)
	}
	table := make(map[edge]bool)
	for from := range numStates {
		for to := range numStates {
			if transitions[from].has(to) {
				table[edge{from, to}] = true
			}
		}
	}
	for _, e := range sortedEdges(drawn) {
		if !table[e] {
			t.Errorf("drawn but not in transitions: %v", e)
		}
	}
	for _, e := range sortedEdges(table) {
		if !drawn[e] {
			t.Errorf("in transitions but not drawn: %v", e)
		}
	}
	seen := make(map[State]bool)
	for e := range drawn {
		seen[e.from], seen[e.to] = true, true
	}
	for s := range numStates {
		if !seen[s] {
			t.Errorf("state %v is not drawn", s)
		}
	}
}

func sortedEdges(m map[edge]bool) []edge {
	var es []edge
	for e := range m {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b edge) int {
		if a.from != b.from {
			return int(a.from) - int(b.from)
		}
		return int(a.to) - int(b.to)
	})
	return es
}

// stateDrawing returns the lines of the code block in State's doc comment.
func stateDrawing(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "state.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.TYPE || g.Doc == nil || g.Specs[0].(*ast.TypeSpec).Name.Name != "State" {
			continue
		}
		var lines []string
		for _, l := range strings.Split(g.Doc.Text(), "\n") {
			if rest, ok := strings.CutPrefix(l, "\t"); ok {
				lines = append(lines, rest)
			} else {
				lines = append(lines, "")
			}
		}
		return lines
	}
	t.Fatal("no doc comment on type State")
	return nil
}

// Directions, as bits: a line glyph's arms, and where an arrow points.
const (
	up = 1 << iota
	down
	left
	right
)

// glyphArms are the directions in which each line glyph connects.
var glyphArms = map[rune]int{
	'─': left | right, '│': up | down,
	'┌': down | right, '┐': down | left, '└': up | right, '┘': up | left,
	'├': up | down | right, '┤': up | down | left, '┬': down | left | right, '┴': up | left | right,
	'┼': up | down | left | right,
	// An arrowhead connects at its back; its tip touches a state.
	'►': left, '◄': right, '▲': down, '▼': up,
}

// arrowTips is where each arrowhead points.
var arrowTips = map[rune]int{'►': right, '◄': left, '▲': up, '▼': down}

func opposite(d int) int {
	switch d {
	case up:
		return down
	case down:
		return up
	case left:
		return right
	}
	return left
}

func step(r, c, d int) (int, int) {
	switch d {
	case up:
		return r - 1, c
	case down:
		return r + 1, c
	case left:
		return r, c - 1
	}
	return r, c + 1
}

// diagramEdges reads the edges of a drawing of states joined by lines of
// box-drawing glyphs. A state is its name with a capital initial. A line
// touches a state beside it (at most one space away) or directly above or
// below it; its ends at states are plain or arrowheads pointing into the
// state. A line, with its branches, is an edge from each of its plain ends
// to each of its arrowhead ends; a line with arrowheads only is an edge
// between each pair of its ends.
func diagramEdges(lines []string) (map[edge]bool, error) {
	grid := make([][]rune, len(lines))
	for i, l := range lines {
		grid[i] = []rune(l)
		if strings.ContainsRune(l, '\t') {
			return nil, fmt.Errorf("line %d: a tab in the drawing", i+1)
		}
	}
	at := func(r, c int) rune {
		if r < 0 || r >= len(grid) || c < 0 || c >= len(grid[r]) {
			return ' '
		}
		return grid[r][c]
	}
	names := make(map[string]State)
	for s := range numStates {
		n := s.String()
		names[strings.ToUpper(n[:1])+n[1:]] = s
	}
	isWord := func(ch rune) bool {
		return ch == '_' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z'
	}

	type cell struct{ r, c int }
	type end struct {
		state State
		arrow bool
	}
	// attached[cell] holds the directions in which the glyph at cell
	// touches a state, and ends[cell] the ends it makes.
	attached := make(map[cell]int)
	ends := make(map[cell][]end)
	attach := func(r, c, toward int, s State) {
		ch := at(r, c)
		if tip, ok := arrowTips[ch]; ok && tip == toward {
			attached[cell{r, c}] |= toward
			ends[cell{r, c}] = append(ends[cell{r, c}], end{s, true})
		} else if glyphArms[ch]&toward != 0 && arrowTips[ch] == 0 {
			attached[cell{r, c}] |= toward
			ends[cell{r, c}] = append(ends[cell{r, c}], end{s, false})
		}
	}
	for r, row := range grid {
		for c0 := 0; c0 < len(row); {
			if !isWord(row[c0]) {
				c0++
				continue
			}
			c1 := c0
			for c1 < len(row) && isWord(row[c1]) {
				c1++
			}
			if s, ok := names[string(row[c0:c1])]; ok {
				if at(r, c0-1) == ' ' {
					attach(r, c0-2, right, s)
				} else {
					attach(r, c0-1, right, s)
				}
				if at(r, c1) == ' ' {
					attach(r, c1+1, left, s)
				} else {
					attach(r, c1, left, s)
				}
				for c := c0; c < c1; c++ {
					attach(r-1, c, down, s)
					attach(r+1, c, up, s)
				}
			}
			c0 = c1
		}
	}

	// Join the glyphs into lines, and check that no arm hangs loose.
	parent := make(map[cell]cell)
	var find func(x cell) cell
	find = func(x cell) cell {
		if p, ok := parent[x]; ok && p != x {
			root := find(p)
			parent[x] = root
			return root
		}
		return x
	}
	var errs []string
	for r, row := range grid {
		for c, ch := range row {
			arms, ok := glyphArms[ch]
			if !ok {
				continue
			}
			x := cell{r, c}
			if _, ok := parent[x]; !ok {
				parent[x] = x
			}
			if tip, ok := arrowTips[ch]; ok && attached[x]&tip == 0 {
				errs = append(errs, fmt.Sprintf("line %d column %d: %c points at no state", r+1, c+1, ch))
			}
			for _, d := range []int{up, down, left, right} {
				if arms&d == 0 || attached[x]&d != 0 {
					continue
				}
				nr, nc := step(r, c, d)
				if glyphArms[at(nr, nc)]&opposite(d) == 0 {
					errs = append(errs, fmt.Sprintf("line %d column %d: %c leads nowhere", r+1, c+1, ch))
					continue
				}
				y := cell{nr, nc}
				if _, ok := parent[y]; !ok {
					parent[y] = y
				}
				parent[find(x)] = find(y)
			}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}

	type lineEnds struct{ plain, arrow []State }
	byLine := make(map[cell]*lineEnds)
	for x, es := range ends {
		root := find(x)
		le := byLine[root]
		if le == nil {
			le = &lineEnds{}
			byLine[root] = le
		}
		for _, e := range es {
			if e.arrow {
				le.arrow = append(le.arrow, e.state)
			} else {
				le.plain = append(le.plain, e.state)
			}
		}
	}
	edges := make(map[edge]bool)
	for root, le := range byLine {
		from := le.plain
		if len(from) == 0 {
			from = le.arrow
		}
		if len(le.arrow) == 0 || len(from) < 2 && len(le.plain) == 0 {
			return nil, fmt.Errorf("line %d column %d: a line without a direction", root.r+1, root.c+1)
		}
		for _, f := range from {
			for _, to := range le.arrow {
				if f == to {
					if len(le.plain) > 0 {
						return nil, fmt.Errorf("line %d column %d: %v leads to itself", root.r+1, root.c+1, f)
					}
					continue
				}
				edges[edge{f, to}] = true
			}
		}
	}
	return edges, nil
}

// TestDiagramEdges checks the reader of the drawing on small drawings.
func TestDiagramEdges(t *testing.T) {
	for _, tc := range []struct {
		name    string
		drawing []string
		want    []edge // nil: an error
	}{
		{"one way", []string{"Ready ──► Busy"}, []edge{{StateReady, StateBusy}}},
		{"both ways", []string{"Ready ◄──► Busy"}, []edge{{StateReady, StateBusy}, {StateBusy, StateReady}}},
		{"down and up", []string{
			"Ready",
			" │ ▲",
			" ▼ │",
			"Frozen",
		}, []edge{{StateReady, StateFrozen}, {StateFrozen, StateReady}}},
		{"branches", []string{
			"Ready ───┐",
			"Busy ────┼──► Stopping",
			"Frozen ──┴──► Failed",
		}, []edge{
			{StateReady, StateStopping}, {StateReady, StateFailed},
			{StateBusy, StateStopping}, {StateBusy, StateFailed},
			{StateFrozen, StateStopping}, {StateFrozen, StateFailed},
		}},
		{"around a corner, words beside", []string{
			"Starting ──► Ready",
			"   │ not Busy",
			"   └──────► Frozen",
		}, []edge{{StateStarting, StateReady}, {StateStarting, StateFrozen}}},
		{"separate lines stay apart", []string{
			"Ready ──► Busy",
			"  │",
			"  ▼",
			"Frozen ─► Thawing",
		}, []edge{{StateReady, StateBusy}, {StateReady, StateFrozen}, {StateFrozen, StateThawing}}},
		{"loose end", []string{"Ready ──► Busy ──"}, nil},
		{"arrow into nothing", []string{"Ready ──►"}, nil},
		{"no arrow", []string{"Ready ─── Busy"}, nil},
		{"broken line", []string{"Ready ── ──► Busy"}, nil},
		{"into itself", []string{"Ready ──┐", "  ▲     │", "  └─────┘"}, nil},
		{"tab", []string{"Ready\t──► Busy"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := diagramEdges(tc.drawing)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("no error; edges %v", sortedEdges(got))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := make(map[edge]bool)
			for _, e := range tc.want {
				want[e] = true
			}
			if g, w := fmt.Sprint(sortedEdges(got)), fmt.Sprint(sortedEdges(want)); g != w {
				t.Errorf("edges %s, want %s", g, w)
			}
		})
	}
}
