package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Progress draws a progress bar of the whole run on a terminal: the
// scenarios done, weighted by their expected time, plus the running one's
// own fraction. On anything else (a pipe, a log file) it writes a line when
// a scenario starts and ends, and every 25% of a scenario. It is safe for
// concurrent use.
type Progress struct {
	w     io.Writer
	tty   bool
	start time.Time

	mu       sync.Mutex
	total    float64 // sum of the weights
	done     float64 // weights of the scenarios done
	name     string  // the running scenario
	weight   float64 // its weight
	frac     float64 // its fraction done
	quarter  int     // last quarter reported (not a terminal)
	lastDraw time.Time
}

// NewProgress returns a bar on w for scenarios whose weights sum to total.
func NewProgress(w io.Writer, total float64) *Progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &Progress{w: w, tty: tty, total: max(total, 1e-9), start: time.Now()}
}

// Begin starts scenario name of the given weight.
func (p *Progress) Begin(name string, weight float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.name, p.weight, p.frac, p.quarter = name, weight, 0, 0
	if !p.tty {
		fmt.Fprintf(p.w, "[%s] %s ...\n", p.elapsed(), name)
		return
	}
	p.draw(true)
}

// Step sets the running scenario's fraction done to done/total.
func (p *Progress) Step(done, total int) {
	if total <= 0 {
		return
	}
	p.Set(float64(done) / float64(total))
}

// Set sets the running scenario's fraction done.
func (p *Progress) Set(frac float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frac = min(max(frac, p.frac), 1)
	if !p.tty {
		if q := int(p.frac * 4); q > p.quarter && q < 4 {
			p.quarter = q
			fmt.Fprintf(p.w, "[%s] %s %d%%\n", p.elapsed(), p.name, q*25)
		}
		return
	}
	p.draw(false)
}

// End ends the running scenario with a one-line summary.
func (p *Progress) End(summary string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += p.weight
	p.weight, p.frac = 0, 0
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "[%s] %s: %s\n", p.elapsed(), p.name, summary)
	if p.tty {
		p.draw(true)
	}
}

// Logf writes a line above the bar.
func (p *Progress) Logf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "[%s] %s\n", p.elapsed(), fmt.Sprintf(format, args...))
	if p.tty {
		p.draw(true)
	}
}

// Finish clears the bar.
func (p *Progress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K")
	}
}

func (p *Progress) elapsed() string {
	d := time.Since(p.start).Round(time.Second)
	return fmt.Sprintf("%02d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}

// draw redraws the bar, at most 10 times a second unless forced.
func (p *Progress) draw(force bool) {
	if !force && time.Since(p.lastDraw) < 100*time.Millisecond {
		return
	}
	p.lastDraw = time.Now()
	const width = 30
	f := min((p.done+p.weight*p.frac)/p.total, 1)
	n := int(f * width)
	fmt.Fprintf(p.w, "\r\033[K[%s%s] %3.0f%% %s %s (%3.0f%%)", strings.Repeat("#", n), strings.Repeat(".", width-n),
		f*100, p.elapsed(), p.name, p.frac*100)
}
