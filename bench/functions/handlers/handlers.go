// Package handlers holds the benchmark functions' handlers, so that the
// functions deployed to kiln (bench/functions/<name>) and the in-process
// floor run exactly the same code.
package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/kilnfx/kiln/executor/sdk"
)

// Echo answers with the body it was sent.
func Echo(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	return &sdk.Response{Body: req.Body}, nil
}

// Order is the input of Transform.
type Order struct {
	ID    string `json:"id"`
	Items []Item `json:"items"`
}

// Item is one line of an Order.
type Item struct {
	Name  string  `json:"name"`
	Qty   int     `json:"qty"`
	Price float64 `json:"price"`
}

// Summary is the output of Transform.
type Summary struct {
	ID    string   `json:"id"`
	Count int      `json:"count"`
	Units int      `json:"units"`
	Total float64  `json:"total"`
	Names []string `json:"names"`
}

// Transform decodes an Order, and answers with its Summary: item and unit
// counts, the total price, and the item names upper-cased and sorted. A
// body that is not an Order fails the call with status 400.
func Transform(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	var o Order
	if err := json.Unmarshal(req.Body, &o); err != nil {
		return &sdk.Response{Status: 400}, err
	}
	s := Summary{ID: o.ID, Count: len(o.Items), Names: make([]string, 0, len(o.Items))}
	for _, it := range o.Items {
		s.Units += it.Qty
		s.Total += float64(it.Qty) * it.Price
		s.Names = append(s.Names, strings.ToUpper(it.Name))
	}
	slices.Sort(s.Names)
	out, err := json.Marshal(&s)
	if err != nil {
		return nil, err
	}
	return &sdk.Response{Header: map[string][]string{"Content-Type": {"application/json"}}, Body: out}, nil
}

// MaxPrimesN bounds the N Primes accepts.
const MaxPrimesN = 50_000_000

// Primes reads a decimal N from the body (10000 when empty) and answers with
// the number of primes up to N, counted with a sieve of Eratosthenes: a
// CPU-bound call whose cost grows with N. N outside 0..MaxPrimesN fails the
// call with status 400.
func Primes(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	n := 10000
	if s := strings.TrimSpace(string(req.Body)); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 || v > MaxPrimesN {
			return &sdk.Response{Status: 400}, errors.New("want a decimal N in 0..50000000")
		}
		n = v
	}
	return &sdk.Response{Body: strconv.AppendInt(nil, int64(CountPrimes(n)), 10)}, nil
}

// CountPrimes returns the number of primes up to and including n.
func CountPrimes(n int) int {
	if n < 2 {
		return 0
	}
	composite := make([]bool, n+1)
	count := 0
	for i := 2; i <= n; i++ {
		if composite[i] {
			continue
		}
		count++
		for j := i * i; j <= n; j += i {
			composite[j] = true
		}
	}
	return count
}

// ByName holds the handlers by the name of the benchmark function that
// runs each: echo, json, primes.
var ByName = map[string]sdk.Handler{
	"echo":   Echo,
	"json":   Transform,
	"primes": Primes,
}
