package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// usage asks for a usage report with token: "" sends the admin token, "-"
// none. The rows are decoded as the API's contract says: kiln.v1 messages
// in protojson.
func (k *kilnd) usage(t *testing.T, query, token string) (int, []*kilnv1.ReportRow) {
	t.Helper()
	req, _ := http.NewRequest("GET", k.url+"/v1/usage?"+query, nil)
	if token == "" {
		token = k.adminToken(t)
	}
	if token != "-" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out kilnv1.ReportResponse
	if resp.StatusCode == 200 {
		if err := decodeMessage(resp.Body, &out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, out.Rows
}

// hammer sends n calls with body to fn from c goroutines and returns the
// call ids answered, with the count of each status; status 0 counts the
// calls sent that got no answer (kilnd died under them).
func (k *kilnd) hammer(t *testing.T, fn string, n, c int, body []byte, stop <-chan struct{}) ([]string, map[int]int) {
	var (
		mu       sync.Mutex
		ids      []string
		statuses = map[int]int{}
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	client := &http.Client{Timeout: 30 * time.Second}
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Post(k.url+"/invoke/"+fn, "text/plain", bytes.NewReader(body))
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil { // the agent died: this call was not answered
					mu.Lock()
					statuses[0]++
					mu.Unlock()
					continue
				}
				mu.Lock()
				ids = append(ids, resp.Header.Get("X-Kiln-Call-Id"))
				statuses[resp.StatusCode]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return ids, statuses
}

func TestTenThousandCallsTenThousandRecords(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-meter", probeSpec(map[string]any{"max_containers": 2}))
	const n = 10000
	body := []byte("0123456789")
	ids, statuses := k.hammer(t, "probe-meter", n, 8, body, nil)
	if len(ids) != n || statuses[202] != n {
		t.Fatalf("client saw %d answers %v, want %d 202s", len(ids), statuses, n)
	}
	var rows []*kilnv1.ReportRow
	waitFor(t, "all records ingested", func() bool {
		_, rows = k.usage(t, "function=probe-meter", "")
		return len(rows) == 1 && rows[0].Count >= n
	})
	r := rows[0]
	if r.Count != n || r.ByStatus["2xx"] != n || r.BytesIn != int64(n*len(body)) || r.BytesOut != int64(n*len("probe:")+n*len(body)) {
		t.Errorf("report = %+v, want %d calls, %d bytes in", r, n, n*len(body))
	}
	if got := r.ByStart["warm"] + r.ByStart["thawed"] + r.ByStart["cold"] + r.ByStart["stem"]; got != n {
		t.Errorf("start kinds sum to %d: %v", got, r.ByStart)
	}
	if r.GbSeconds <= 0 {
		t.Errorf("GB-seconds = %v", r.GbSeconds)
	}
	// Every call id the client saw has its record.
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	got := k.callIDs(t, "probe-meter", "")
	for id := range seen {
		if !got[id] {
			t.Fatalf("no record of call %s", id)
		}
	}
	// Bad report input gets 400 with the reason.
	for _, q := range []string{"from=yesterday", "group_by=week", "from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "format=xml"} {
		if st, _ := k.usage(t, q, ""); st != 400 {
			t.Errorf("usage?%s = %d, want 400", q, st)
		}
	}
	if r := k.do(t, "GET", "/v1/calls?limit=0", nil); r.status != 400 {
		t.Errorf("calls?limit=0 = %d", r.status)
	}
	if r := k.do(t, "GET", "/metrics", nil); r.status != 200 || !bytes.Contains(r.body, []byte(`kiln_calls_total{function="probe-meter",start="warm",status="202"}`)) {
		t.Errorf("metrics lack kiln_calls_total of the function: %d", r.status)
	}
}

// callIDs returns the ids of fn's call records, asked for with token: ""
// sends the admin token, "-" none.
func (k *kilnd) callIDs(t *testing.T, fn, token string) map[string]bool {
	t.Helper()
	req, _ := http.NewRequest("GET", k.url+"/v1/calls?limit=10000&function="+fn, nil)
	if token == "" {
		token = k.adminToken(t)
	}
	if token != "-" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out kilnv1.CallList
	if err := decodeMessage(resp.Body, &out); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, c := range out.Calls {
		ids[c.CallId] = true
	}
	return ids
}

// decodeMessage reads the JSON of m from r.
func decodeMessage(r io.Reader, m proto.Message) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(b, m)
}

// TestKillLosesNoAnsweredCall SIGKILLs kilnd under load and checks that
// every call the client saw answered has a usage record after a restart.
func TestKillLosesNoAnsweredCall(t *testing.T) {
	requireIntegration(t)
	dir := shortTempDir(t)
	k, err := launch(dir)
	if err != nil {
		t.Fatal(err)
	}
	k.deploy(t, "probe-kill", probeSpec(map[string]any{"max_containers": 2}))
	stop := make(chan struct{})
	go func() {
		time.Sleep(1500 * time.Millisecond)
		k.kill()
		close(stop)
	}()
	ids, _ := k.hammer(t, "probe-kill", 1<<30, 8, []byte("x"), stop)
	<-stop
	if len(ids) < 100 {
		t.Fatalf("only %d calls answered before the kill", len(ids))
	}
	k2 := startKilnd(t, dir)
	got := k2.callIDs(t, "probe-kill", "")
	missing := 0
	for _, id := range ids {
		if !got[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d answered calls have no record after SIGKILL", missing, len(ids))
	}
	t.Logf("%d answered calls before SIGKILL, all recorded", len(ids))
}

func TestTenantsSeeOnlyTheirUsage(t *testing.T) {
	requireIntegration(t)
	k := startKilnd(t, shortTempDir(t))
	tokenBytes, err := readFile(k.dataDir + "/admin.token")
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(tokenBytes)
	if r := k.doToken(t, "GET", "/v1/functions", "", nil); r.status != 401 || !bytes.Contains(r.body, []byte(filepath.Join(k.dataDir, "admin.token"))) {
		t.Fatalf("management without token = %d %s, want 401 saying where the token is", r.status, r.body)
	}
	authed := func(method, path, token string, body []byte) response {
		req, _ := http.NewRequest(method, k.url+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return response{resp.StatusCode, resp.Header, b.Bytes()}
	}
	k.deploy(t, "probe-tenant", probeSpec(map[string]any{"require_key": true}))
	keys := map[string]string{}
	for _, tenant := range []string{"acme", "globex"} {
		r := authed("POST", "/v1/keys", admin, []byte(fmt.Sprintf(`{"tenant":%q}`, tenant)))
		var out struct{ ID, Key string }
		if err := json.Unmarshal(r.body, &out); err != nil || r.status != 201 || out.Key == "" {
			t.Fatalf("create key = %d %s", r.status, r.body)
		}
		keys[tenant] = out.Key
	}
	calls := map[string]int{"acme": 3, "globex": 5}
	for tenant, n := range calls {
		for range n {
			if r := authed("POST", "/invoke/probe-tenant", keys[tenant], []byte("x")); r.status != 202 {
				t.Fatalf("call as %s = %d %s", tenant, r.status, r.body)
			}
		}
	}
	if r := k.do(t, "POST", "/invoke/probe-tenant", []byte("x")); r.status != 401 {
		t.Errorf("call without key = %d, want 401", r.status)
	}
	if r := authed("POST", "/invoke/probe-tenant", "kiln_forged", []byte("x")); r.status != 401 {
		t.Errorf("call with a wrong key = %d, want 401", r.status)
	}
	var rows []*kilnv1.ReportRow
	waitFor(t, "records ingested", func() bool {
		_, rows = k.usage(t, "group_by=tenant", admin)
		var total int64
		for _, r := range rows {
			total += r.Count
		}
		return total >= 10
	})
	byTenant := map[string]int64{}
	for _, r := range rows {
		byTenant[r.Group] = r.Count
	}
	if byTenant["acme"] != 3 || byTenant["globex"] != 5 || byTenant[""] != 2 {
		t.Errorf("admin report by tenant = %v, want acme 3, globex 5, and 2 refused calls with no tenant", byTenant)
	}
	st, own := k.usage(t, "group_by=tenant", keys["acme"])
	if st != 200 || len(own) != 1 || own[0].Group != "acme" || own[0].Count != 3 {
		t.Errorf("acme's own report = %d %+v", st, own)
	}
	if st, _ := k.usage(t, "tenant=globex", keys["acme"]); st != 401 {
		t.Errorf("acme asking for globex = %d, want 401", st)
	}
	if ids := k.callIDs(t, "probe-tenant", keys["globex"]); len(ids) != 5 {
		t.Errorf("globex sees %d calls, want its 5", len(ids))
	}
}

func readFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}

// TestDashboardMetricsExist checks that every kiln metric the Grafana
// dashboard charts is exported.
func TestDashboardMetricsExist(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-dash", probeSpec(nil))
	if r := k.do(t, "POST", "/invoke/probe-dash", []byte("x")); r.status != 202 {
		t.Fatal(r.status)
	}
	b, err := os.ReadFile("../../deploy/grafana/kiln-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	metrics := string(k.do(t, "GET", "/metrics", nil).body)
	for _, name := range regexp.MustCompile(`kiln_[a-z_]+`).FindAllString(string(b), -1) {
		if name == "kiln_queued_calls" || name == "kiln_node" {
			continue // only exported while calls wait
		}
		if !strings.Contains(metrics, "\n"+name) {
			t.Errorf("the dashboard charts %s, which /metrics lacks", name)
		}
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(metrics, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}
