package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// maxReportBody bounds a usage report or a list of calls read into memory
// (10000 calls, or a month of minutes for many functions).
const maxReportBody = 256 << 20

// CreateKey makes a new API key for tenant and returns it with its secret
// (Key), which the agent never shows again: it keeps only its hash.
func (c *Client) CreateKey(ctx context.Context, tenant string) (*kilnv1.ApiKey, error) {
	if tenant == "" {
		return nil, errors.New("create key: empty tenant")
	}
	body, err := jsonOptions.Marshal(&kilnv1.CreateApiKeyRequest{Tenant: tenant})
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	k := new(kilnv1.ApiKey)
	if err := c.do(ctx, http.MethodPost, "/v1/keys", nil, body, maxManagementBody, k); err != nil {
		return nil, err
	}
	return k, nil
}

// ListKeys returns every API key, revoked ones included (Revoked set),
// without their secrets.
func (c *Client) ListKeys(ctx context.Context) ([]*kilnv1.ApiKey, error) {
	list := new(kilnv1.ApiKeyList)
	if err := c.do(ctx, http.MethodGet, "/v1/keys", nil, nil, maxManagementBody, list); err != nil {
		return nil, err
	}
	return list.Keys, nil
}

// RevokeKey revokes the API key id at once. An unknown id is an *APIError
// of class wire.ClassNotFound.
func (c *Client) RevokeKey(ctx context.Context, id string) error {
	if err := validSegment("key id", id); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/v1/keys/"+id, nil, nil, maxManagementBody, nil)
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

// Usage returns the usage report q selects: a row per group (one row
// without grouping), by name or by time, each row's by_status and by_start
// holding every key of wire's Status and Start constants.
func (c *Client) Usage(ctx context.Context, q UsageQuery) (*kilnv1.ReportResponse, error) {
	v := q.values()
	v.Set("format", "json")
	r := new(kilnv1.ReportResponse)
	if err := c.do(ctx, http.MethodGet, "/v1/usage", v, nil, maxReportBody, r); err != nil {
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
// unknown id, or another tenant's when the token is a tenant's key, is an
// *APIError of class wire.ClassNotFound.
func (c *Client) GetCall(ctx context.Context, id string) (*kilnv1.CallRecord, error) {
	if err := validSegment("call id", id); err != nil {
		return nil, err
	}
	call := new(kilnv1.CallRecord)
	if err := c.do(ctx, http.MethodGet, "/v1/calls/"+id, nil, nil, maxManagementBody, call); err != nil {
		return nil, err
	}
	return call, nil
}

// ListCalls returns the usage records of the calls q selects, newest first;
// none is an empty slice.
func (c *Client) ListCalls(ctx context.Context, q CallQuery) ([]*kilnv1.CallRecord, error) {
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
	list := new(kilnv1.CallList)
	if err := c.do(ctx, http.MethodGet, "/v1/calls", v, nil, maxReportBody, list); err != nil {
		return nil, err
	}
	if list.Calls == nil {
		return []*kilnv1.CallRecord{}, nil
	}
	return list.Calls, nil
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
