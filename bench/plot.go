package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// WritePlots draws the run's plots as PNG files in dir and records their
// paths, relative to relTo (the report's directory), in r.Plots:
// ladder.png (floor → warm → thawed → stem → cold, log scale),
// throughput.png (calls/s and p99 against concurrency), cdf-all.png and
// cdf-<scenario>.png (each kiln scenario's latency CDF beside its floor's).
func (r *Run) WritePlots(dir, relTo string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Plots of an earlier run that this one does not redraw would be
	// taken for this run's.
	for _, pat := range []string{"cdf-*.png", "ladder.png", "throughput.png"} {
		old, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, f := range old {
			_ = os.Remove(f)
		}
	}
	r.Plots = nil
	save := func(p *plot.Plot, w, h vg.Length, name string) error {
		path := filepath.Join(dir, name)
		if err := p.Save(w, h, path); err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
		rel, err := filepath.Rel(relTo, path)
		if err != nil {
			rel = path
		}
		r.Plots = append(r.Plots, filepath.ToSlash(rel))
		return nil
	}
	if p, ok := r.ladderPlot(); ok {
		if err := save(p, 7*vg.Inch, 4.5*vg.Inch, "ladder.png"); err != nil {
			return err
		}
	}
	if p, ok := r.throughputPlot(); ok {
		if err := save(p, 7*vg.Inch, 4.5*vg.Inch, "throughput.png"); err != nil {
			return err
		}
	}
	var main []Result
	for _, n := range []string{
		"floor", "floor-proc", "floor-proc-seq", "floor-hop", "floor-grpc-hop", "floor-grpc-hop-unary", "floor-grpc-hop-stream",
		"warm-http", "warm-http-seq", "warm-grpc", "warm-stream", "thawed", "stem", "cold", "burst",
	} {
		if x := r.Find(n); x != nil && len(x.CDF) > 0 {
			main = append(main, *x)
		}
	}
	if p, ok := r.cdfPlot("Latency CDF of the main scenarios", main, true); ok {
		if err := save(p, 8*vg.Inch, 5*vg.Inch, "cdf-all.png"); err != nil {
			return err
		}
	}
	for _, x := range r.Results {
		if x.Floor == "" || x.Floor == x.Scenario || len(x.CDF) == 0 {
			continue
		}
		rs := []Result{x}
		if f := r.Find(x.Floor); f != nil && len(f.CDF) > 0 {
			rs = append(rs, *f)
		}
		p, ok := r.cdfPlot("Latency CDF: "+x.Scenario+" ("+x.Mode+")", rs, false)
		if !ok {
			continue
		}
		if err := save(p, 6*vg.Inch, 4*vg.Inch, "cdf-"+x.Scenario+".png"); err != nil {
			return err
		}
	}
	return nil
}

// latencyTicks labels a log axis of microseconds with units.
type latencyTicks struct{}

// Over three decades or less it labels 1, 2 and 5 of each decade, over
// more only the powers of ten.
func (latencyTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.LogTicks{Prec: -1}.Ticks(lo, hi)
	narrow := math.Log10(hi/lo) <= 3
	for i := range ts {
		v := ts[i].Value
		m := v / math.Pow10(int(math.Floor(math.Log10(v)+1e-9)))
		if ts[i].Label != "" || (narrow && (math.Abs(m-2) < 1e-6 || math.Abs(m-5) < 1e-6)) {
			ts[i].Label = fmtUSShort(v)
		}
	}
	return ts
}

func fmtUSShort(us float64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%gµs", us)
	case us < 1e6:
		return fmt.Sprintf("%gms", us/1000)
	}
	return fmt.Sprintf("%gs", us/1e6)
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Add(plotter.NewGrid())
	return p
}

func (r *Run) ladderPlot() (*plot.Plot, bool) {
	names, rows := r.Ladder()
	if len(rows) < 2 {
		return nil, false
	}
	p := newPlot("The latency ladder, one call at a time (log scale)", "", "latency")
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = latencyTicks{}
	series := []struct {
		name  string
		value func(Result) float64
		shape draw.GlyphDrawer
	}{
		{"p50", func(x Result) float64 { return x.P50 }, draw.CircleGlyph{}},
		{"p99", func(x Result) float64 { return x.P99 }, draw.TriangleGlyph{}},
	}
	for i, s := range series {
		xys := make(plotter.XYs, len(rows))
		for j, x := range rows {
			xys[j] = plotter.XY{X: float64(j), Y: max(s.value(x), 1)}
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, false
		}
		l.Color = plotutil.Color(i)
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		pts.Color, pts.Shape, pts.Radius = plotutil.Color(i), s.shape, vg.Points(4)
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
		if i == 0 {
			labels := make([]string, len(rows))
			for j, x := range rows {
				labels[j] = "  " + fmtUS(x.P50)
			}
			lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
			if err == nil {
				p.Add(lb)
			}
		}
	}
	lo, hi := math.Inf(1), 0.0
	for _, x := range rows {
		lo, hi = min(lo, max(x.P50, 1)), max(hi, x.P99)
	}
	p.Y.Min, p.Y.Max = lo/1.6, hi*1.6
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(rows))-0.3
	p.Legend.Top, p.Legend.Left = true, true
	return p, true
}

func (r *Run) throughputPlot() (*plot.Plot, bool) {
	t := r.Find("throughput")
	if t == nil || len(t.Levels) == 0 {
		return nil, false
	}
	p := newPlot("Throughput against concurrency (closed loop, echo)", "concurrent callers", "calls/s")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = powersOfTwo{}
	names := map[string]string{
		"throughput-floor":          "in-process floor (reference)",
		"throughput-floor-proc":     "floor-proc",
		"throughput-floor-hop":      "floor-hop",
		"throughput-floor-grpc-hop": "floor-grpc-hop",
		"throughput":                "kiln warm-http",
	}
	for i, x := range []*Result{r.Find("throughput-floor"), r.Find("throughput-floor-proc"), r.Find("throughput-floor-hop"), r.Find("throughput-floor-grpc-hop"), t} {
		if x == nil || len(x.Levels) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(x.Levels))
		for j, l := range x.Levels {
			xys[j] = plotter.XY{X: float64(l.X), Y: l.Throughput}
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, false
		}
		l.Color, pts.Color, pts.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
		p.Add(l, pts)
		if x.Scenario == "throughput-floor" {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		p.Legend.Add(names[x.Scenario], l, pts)
	}
	p.Y.Min = 0
	p.Y.Max *= 1.45 // room for the legend
	p.Y.Tick.Marker = plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		ts := plot.DefaultTicks{}.Ticks(lo, hi)
		for i := range ts {
			if ts[i].Label != "" {
				ts[i].Label = fmt.Sprintf("%.0f", ts[i].Value)
			}
		}
		return ts
	})
	p.Legend.Top, p.Legend.Left = true, true
	return p, true
}

// powersOfTwo ticks a log axis of concurrency levels.
type powersOfTwo struct{}

func (powersOfTwo) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for v := 1.0; v <= hi*1.01; v *= 2 {
		if v >= lo*0.99 {
			ts = append(ts, plot.Tick{Value: v, Label: fmt.Sprint(v)})
		}
	}
	return ts
}

// cdfPlot draws the CDFs of rs on a log latency axis: in colours, floors
// dashed (all), or the first in colour and the rest, its floor, dashed grey.
func (r *Run) cdfPlot(title string, rs []Result, all bool) (*plot.Plot, bool) {
	p := newPlot(title, "latency (log scale)", "fraction of calls at most")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = latencyTicks{}
	p.Y.Min, p.Y.Max = 0, 1
	n := 0
	lo, hi := math.Inf(1), 0.0
	for _, x := range rs {
		if len(x.CDF) == 0 {
			continue
		}
		xys := make(plotter.XYs, 0, len(x.CDF))
		for _, pt := range x.CDF {
			us := max(pt.US, 0.1)
			xys = append(xys, plotter.XY{X: us, Y: pt.Q})
			lo, hi = min(lo, us), max(hi, us)
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			continue
		}
		l.Color = plotutil.Color(n)
		l.Width = vg.Points(1.5)
		switch {
		case !all && n > 0: // the floor beside one scenario
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			l.Color = color.Gray{Y: 90}
		case all && strings.HasPrefix(x.Scenario, "floor"):
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		case all && n >= len(plotutil.DefaultColors):
			l.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
		}
		p.Add(l)
		p.Legend.Add(x.Scenario, l)
		n++
	}
	if n == 0 || hi <= lo {
		return nil, false
	}
	p.X.Min, p.X.Max = lo*0.8, hi*1.25
	p.Legend.Left, p.Legend.Top = true, true
	return p, true
}
