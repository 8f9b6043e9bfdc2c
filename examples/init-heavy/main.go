// Command init-heavy does expensive work in init() — a 200,000-entry lookup
// table, a prime sieve, compiled regexps and parsed templates — so that the
// value of a build-time snapshot is visible: restored instances get all of it
// for free.
package main

import (
	"encoding/json"
	"fmt"
	htmltemplate "html/template"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"thaw.dev/thaw"
)

const (
	// tableSize is the number of generated words in the lookup table.
	tableSize = 200_000
	// sieveLimit is the largest number the prime table answers for.
	sieveLimit = 2_000_000
)

var (
	// table maps generated words to their FNV-1a hash.
	table map[string]uint32
	// composite[n] is true when n is not prime (n <= sieveLimit).
	composite []bool
	// primeCount is the number of primes <= sieveLimit.
	primeCount int
	// defaultKey is looked up by GET / when no k is given.
	defaultKey string

	emailRe   *regexp.Regexp
	isoDateRe *regexp.Regexp
	slugRe    *regexp.Regexp

	stableTmpl *template.Template
	pageTmpl   *htmltemplate.Template

	// initDuration is how long init took, measured when the snapshot was built.
	initDuration time.Duration
	// initStartedAt is when init began (Unix ns). In a snapshot it is the
	// build's time, identical in every instance: proof that init ran once.
	initStartedAt int64
	// warmChecksum is computed by the warm-up hook before the snapshot.
	warmChecksum uint32
)

func init() {
	start := time.Now()
	initStartedAt = start.UnixNano()

	table = make(map[string]uint32, tableSize)
	for i := 0; i < tableSize; i++ {
		w := word(i)
		table[w] = fnv1a(w)
	}
	if len(table) != tableSize {
		panic(fmt.Sprintf("init-heavy: generated %d distinct words, want %d", len(table), tableSize))
	}
	defaultKey = word(0)

	composite = make([]bool, sieveLimit+1)
	composite[0], composite[1] = true, true
	for p := 2; p*p <= sieveLimit; p++ {
		if !composite[p] {
			for m := p * p; m <= sieveLimit; m += p {
				composite[m] = true
			}
		}
	}
	for _, c := range composite {
		if !c {
			primeCount++
		}
	}

	emailRe = regexp.MustCompile(`^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$`)
	isoDateRe = regexp.MustCompile(`^(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$`)
	slugRe = regexp.MustCompile(`^[a-z0-9]+(?:-[a-z0-9]+)*$`)

	stableTmpl = template.Must(template.New("stable").Parse("entries={{.Entries}}\n"))
	pageTmpl = htmltemplate.Must(htmltemplate.New("page").Parse(
		`<!doctype html><title>init-heavy</title><p>Hello, {{.Name}}! ` +
			`The table has {{.Entries}} words and {{.Primes}} primes up to {{.Limit}}.</p>` + "\n"))

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", lookup)
	mux.HandleFunc("GET /prime", prime)
	mux.HandleFunc("GET /match", match)
	mux.HandleFunc("GET /stable", stable)
	mux.HandleFunc("GET /page", page)
	thaw.Serve(mux)

	// Touch the table and the regexps once before the snapshot is taken.
	thaw.Warmup(func() {
		var sum uint32
		for _, v := range table {
			sum ^= v
		}
		warmChecksum = sum
		for _, re := range []*regexp.Regexp{emailRe, isoDateRe, slugRe} {
			re.MatchString(defaultKey)
		}
	})

	initDuration = time.Since(start)
}

func main() { thaw.Main() }

// syllables are combined into generated words: 20 consonants × 5 vowels.
var syllables = func() []string {
	var s []string
	for _, c := range "bcdfghjklmnpqrstvwxz" {
		for _, v := range "aeiou" {
			s = append(s, string(c)+string(v))
		}
	}
	return s
}()

// word returns the i-th generated word: three syllables (10^6 combinations),
// visited in a scrambled but bijective order.
func word(i int) string {
	n := (i*7919 + 4241) % 1_000_000 // 7919 is coprime with 10^6
	return syllables[n/10_000] + syllables[n/100%100] + syllables[n%100]
}

// fnv1a is the 32-bit FNV-1a hash.
func fnv1a(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// lookup answers GET /?k=word with the table entry for k.
func lookup(w http.ResponseWriter, r *http.Request) {
	k := r.URL.Query().Get("k")
	if k == "" {
		k = defaultKey
	}
	var value *uint32
	if v, ok := table[k]; ok {
		value = &v
	}
	writeJSON(w, http.StatusOK, struct {
		Entries int     `json:"entries"`
		Lookup  *uint32 `json:"lookup"`
		InitMS  int64   `json:"init_ms"`
		InitAt  int64   `json:"init_started_at_ns"`
	}{len(table), value, initDuration.Milliseconds(), initStartedAt})
}

// prime answers GET /prime?n=97 from the precomputed sieve.
func prime(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "query parameter n must be an integer"})
		return
	}
	if n < 0 || n > sieveLimit {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": fmt.Sprintf("n must be between 0 and %d", sieveLimit)})
		return
	}
	writeJSON(w, http.StatusOK, struct {
		N     int  `json:"n"`
		Prime bool `json:"prime"`
	}{n, !composite[n]})
}

// match answers GET /match?s=... with which of the precompiled patterns s matches.
func match(w http.ResponseWriter, r *http.Request) {
	s := r.URL.Query().Get("s")
	writeJSON(w, http.StatusOK, struct {
		S       string `json:"s"`
		Email   bool   `json:"email"`
		ISODate bool   `json:"iso_date"`
		Slug    bool   `json:"slug"`
	}{s, emailRe.MatchString(s), isoDateRe.MatchString(s), slugRe.MatchString(s)})
}

// stable answers GET /stable with a body that depends on nothing but the code.
func stable(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	stableTmpl.Execute(w, struct{ Entries int }{len(table)})
}

// page answers GET /page?name=... with HTML from the pre-parsed template.
func page(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.URL.Query().Get("name"))
	if name == "" {
		name = "stranger"
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	pageTmpl.Execute(w, struct {
		Name                   string
		Entries, Primes, Limit int
	}{name, len(table), primeCount, sieveLimit})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
