package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kilnfx/kiln/api/wire"
)

// maxReportBody bounds a usage report or a list of calls read into memory
// (10000 calls, or a month of minutes for many functions).
const maxReportBody = 256 << 20

// Key is a tenant's API key. Key (the secret) is set only in the answer of
// [Client.CreateKey]: the agent keeps only its hash.
type Key struct {
	// ID names the key, for RevokeKey.
	ID string `json:"id"`
	// Tenant is the tenant the key authenticates and bills.
	Tenant string `json:"tenant"`
	// Key is the secret to send as "Authorization: Bearer KEY"; empty in
	// listings.
	Key string `json:"key,omitempty"`
	// Created is when the key was made.
	Created time.Time `json:"created"`
	// Revoked is when the key was revoked; zero while it is valid.
	Revoked time.Time `json:"revoked,omitzero"`
}

// CreateKey makes a new API key for tenant and returns it with its secret,
// which the agent never shows again.
func (c *Client) CreateKey(ctx context.Context, tenant string) (*Key, error) {
	if tenant == "" {
		return nil, errors.New("create key: empty tenant")
	}
	body, err := json.Marshal(map[string]string{"tenant": tenant})
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	k := new(Key)
	if err := c.doJSON(ctx, http.MethodPost, "/v1/keys", nil, body, maxManagementBody, k); err != nil {
		return nil, err
	}
	return k, nil
}

// ListKeys returns every API key, revoked ones included, without their
// secrets.
func (c *Client) ListKeys(ctx context.Context) ([]Key, error) {
	var out struct {
		Keys []Key `json:"keys"`
	}
	if err := c.doJSON(ctx, http.MethodGet, "/v1/keys", nil, nil, maxManagementBody, &out); err != nil {
		return nil, err
	}
	return out.Keys, nil
}

// RevokeKey revokes the API key id at once. An unknown id is an *APIError
// of class wire.ClassNotFound.
func (c *Client) RevokeKey(ctx context.Context, id string) error {
	if err := validSegment("key id", id); err != nil {
		return err
	}
	return c.doJSON(ctx, http.MethodDelete, "/v1/keys/"+id, nil, nil, maxManagementBody, nil)
}

// UsageQuery selects and groups usage for [Client.Usage]. Zero fields do
// not filter. Reports have a resolution of one minute.
type UsageQuery struct {
	// From and To bound the calls' received time to [From, To); zero
	// leaves that side open.
	From, To time.Time
	// Function and Tenant, when set, select one function or tenant
	// exactly. With a tenant's API key the agent reports only that tenant.
	Function, Tenant string
	// GroupBy is one of wire's GroupBy constants.
	GroupBy string
}

func (q UsageQuery) values() url.Values {
	v := url.Values{}
	setTime(v, "from", q.From)
	setTime(v, "to", q.To)
	setString(v, "function", q.Function)
	setString(v, "tenant", q.Tenant)
	setString(v, "group_by", q.GroupBy)
	return v
}

// UsageReport is the answer of [Client.Usage].
type UsageReport struct {
	// GroupBy is the grouping of the rows.
	GroupBy string `json:"group_by"`
	// Rows holds one row per group, in the agent's order (by name or by
	// time).
	Rows []UsageRow `json:"rows"`
}

// UsageRow is the usage of one group of calls.
type UsageRow struct {
	// Group is the function or tenant name, the bucket's start in RFC 3339
	// for time groupings, or "" for wire.GroupByNone.
	Group string `json:"group"`
	// Time is the bucket's start for time groupings, else zero.
	Time time.Time `json:"time,omitzero"`
	// Count is the number of calls.
	Count int64 `json:"count"`
	// ByStatus counts the calls by the class of their HTTP status.
	ByStatus StatusCounts `json:"by_status"`
	// ByStart counts the calls by how their container was started.
	ByStart StartCounts `json:"by_start"`
	// RunSumMs is the sum of the run times in milliseconds; RunP50Ms and
	// RunP99Ms are estimated percentiles (within about 19%).
	RunSumMs float64 `json:"run_sum_ms"`
	RunP50Ms float64 `json:"run_p50_ms"`
	RunP99Ms float64 `json:"run_p99_ms"`
	// QueueSumMs is the sum of the waits for a container in milliseconds.
	QueueSumMs float64 `json:"queue_sum_ms"`
	// GBSeconds is memory limit times run time; CPUSeconds the CPU time
	// used.
	GBSeconds  float64 `json:"gb_seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// BytesIn and BytesOut are request and answer body bytes.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// StatusCounts counts calls by HTTP status class; Other counts statuses
// below 200 or above 599 (0 when the call got no answer).
type StatusCounts struct {
	S2xx  int64 `json:"2xx"`
	S3xx  int64 `json:"3xx"`
	S4xx  int64 `json:"4xx"`
	S5xx  int64 `json:"5xx"`
	Other int64 `json:"other"`
}

// StartCounts counts calls by start kind; None counts calls refused before
// they reached a container.
type StartCounts struct {
	Warm   int64 `json:"warm"`
	Thawed int64 `json:"thawed"`
	Stem   int64 `json:"stem"`
	Cold   int64 `json:"cold"`
	None   int64 `json:"none"`
}

// Usage returns the usage report q selects.
func (c *Client) Usage(ctx context.Context, q UsageQuery) (*UsageReport, error) {
	v := q.values()
	v.Set("format", "json")
	r := new(UsageReport)
	if err := c.doJSON(ctx, http.MethodGet, "/v1/usage", v, nil, maxReportBody, r); err != nil {
		return nil, err
	}
	return r, nil
}

// UsageCSV returns the usage report q selects as the agent's CSV, header
// line included, unchanged.
func (c *Client) UsageCSV(ctx context.Context, q UsageQuery) ([]byte, error) {
	v := q.values()
	v.Set("format", "csv")
	return c.get(ctx, "/v1/usage", v, "text/csv", maxReportBody)
}

// Call is the usage record of one call.
type Call struct {
	CallID      string    `json:"call_id"`
	Function    string    `json:"function"`
	Revision    string    `json:"revision,omitempty"`
	Tenant      string    `json:"tenant,omitempty"`
	Trigger     string    `json:"trigger"`
	ReceivedAt  time.Time `json:"received_at"`
	QueueWaitMs float64   `json:"queue_wait_ms"`
	// Start is how the container was started (warm, thawed, stem, cold);
	// empty when the call never reached one.
	Start       string  `json:"start,omitempty"`
	InitMs      float64 `json:"init_ms"`
	RunMs       float64 `json:"run_ms"`
	TotalMs     float64 `json:"total_ms"`
	CPUUserMs   float64 `json:"cpu_user_ms"`
	CPUSystemMs float64 `json:"cpu_system_ms"`
	MemoryPeak  int64   `json:"memory_peak_bytes"`
	MemoryLimit int64   `json:"memory_limit_bytes"`
	// Shared is set when the container served other calls at the same time.
	Shared   bool  `json:"shared,omitempty"`
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// Status is the HTTP status answered; ErrorClass kiln's error class,
	// if any.
	Status      int     `json:"status"`
	ErrorClass  string  `json:"error_class,omitempty"`
	ContainerID string  `json:"container_id,omitempty"`
	Node        string  `json:"node"`
	GBSeconds   float64 `json:"gb_seconds"`
	CPUSeconds  float64 `json:"cpu_seconds"`
}

// CallQuery selects calls for [Client.ListCalls]. Zero fields do not
// filter.
type CallQuery struct {
	Function, Tenant string
	// Since keeps the calls received at or after it.
	Since time.Time
	// Limit is the most calls answered, 1..wire.MaxCallLimit; 0 is the
	// agent's default, wire.DefaultCallLimit.
	Limit int
}

// GetCall returns the usage record of the call id (an X-Kiln-Call-Id). An
// unknown id is an *APIError of class wire.ClassNotFound.
func (c *Client) GetCall(ctx context.Context, id string) (*Call, error) {
	if err := validSegment("call id", id); err != nil {
		return nil, err
	}
	call := new(Call)
	if err := c.doJSON(ctx, http.MethodGet, "/v1/calls/"+id, nil, nil, maxManagementBody, call); err != nil {
		return nil, err
	}
	return call, nil
}

// ListCalls returns the usage records of the calls q selects, newest first.
func (c *Client) ListCalls(ctx context.Context, q CallQuery) ([]Call, error) {
	if q.Limit < 0 || q.Limit > wire.MaxCallLimit {
		return nil, fmt.Errorf("list calls: limit %d is outside 1..%d", q.Limit, wire.MaxCallLimit)
	}
	v := url.Values{}
	setString(v, "function", q.Function)
	setString(v, "tenant", q.Tenant)
	setTime(v, "since", q.Since)
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out struct {
		Calls []Call `json:"calls"`
	}
	if err := c.doJSON(ctx, http.MethodGet, "/v1/calls", v, nil, maxReportBody, &out); err != nil {
		return nil, err
	}
	return out.Calls, nil
}

// doJSON sends a request with a JSON body (none when nil) and decodes a
// successful answer of at most limit bytes into out (ignored when nil).
func (c *Client) doJSON(ctx context.Context, method, path string, query url.Values, body []byte, limit int64, out any) error {
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	data, err := c.send(req, limit)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// get sends a GET accepting the media type accept and returns the answer's
// body, of at most limit bytes.
func (c *Client) get(ctx context.Context, path string, query url.Values, accept string, limit int64) ([]byte, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, query, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	return c.send(req, limit)
}

// send sends req and returns the body of a successful answer, of at most
// limit bytes; an error answer is an *APIError.
func (c *Client) send(req *http.Request, limit int64) ([]byte, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, readAPIError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", req.Method, req.URL.Path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s %s: answer larger than %d bytes", req.Method, req.URL.Path, limit)
	}
	return data, nil
}

// validSegment checks that s can be one segment of a request path.
func validSegment(what, s string) error {
	if s == "" || s == "." || s == ".." || strings.Contains(s, "/") {
		return fmt.Errorf("invalid %s %q", what, s)
	}
	return nil
}

func setString(v url.Values, key, s string) {
	if s != "" {
		v.Set(key, s)
	}
}

func setTime(v url.Values, key string, t time.Time) {
	if !t.IsZero() {
		v.Set(key, t.UTC().Format(time.RFC3339Nano))
	}
}
