#!/usr/bin/env python3
"""Product pages under a Zipf workload, counting where each answer came from.

    bench/zipf_pages.py discover BASE STORES OUT.tsv
    bench/zipf_pages.py run BASE PAGES.tsv REQUESTS [--s 1.0] [--workers 4] [--seed 7] > report.json

`discover` lists every product of stores seed-0 … seed-(STORES-1) through the shopper API with
`X-Kirana-Consistency: strong` (so the read cache is neither used nor filled), one
`slug<TAB>product_id` line each, in the order the API gives them.

`run` requests REQUESTS HTML product pages (`/{slug}/product/{id}`), without cookies, as a first
visit does. A store is picked with Zipf popularity (rank k has weight 1/k^s; seed-0 is rank 1, as
the seed manifest says), then one of its products with Zipf popularity among that store's
products (again 1/k^s, in the API's order). The sequence is fixed by --seed and split round-robin
over --workers processes, each on one keep-alive connection. It counts the `x-kirana-cache` header
of every answer (hit, hit-shared, miss, stale, or none) and the status codes, and reports what an
ideal cache (unbounded, never expiring) would miss: the distinct pages of the sequence.
"""

import bisect
import http.client
import json
import multiprocessing as mp
import random
import sys
import time
import urllib.parse
from collections import Counter


def get(conn, path, headers=None):
    conn.request("GET", path, headers=headers or {})
    res = conn.getresponse()
    body = res.read()
    return res, body


def discover(base, stores, out):
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    n = 0
    with open(out, "w") as f:
        for i in range(stores):
            slug = f"seed-{i}"
            cursor = None
            while True:
                q = {"limit": "100"}
                if cursor:
                    q["cursor"] = cursor
                path = f"/api/v1/storefront/{slug}/products?" + urllib.parse.urlencode(q)
                res, body = get(conn, path, {"X-Kirana-Consistency": "strong"})
                if res.status != 200:
                    raise SystemExit(f"{path}: {res.status} {body[:200]!r}")
                page = json.loads(body)
                for item in page["items"]:
                    f.write(f"{slug}\t{item['id']}\n")
                    n += 1
                cursor = page.get("next_cursor")
                if not cursor:
                    break
    print(f"{n} products in {stores} stores", file=sys.stderr)


def cdf(n, s):
    acc, out = 0.0, []
    for k in range(1, n + 1):
        acc += 1.0 / k**s
        out.append(acc)
    return [x / acc for x in out]


def sequence(pages_file, requests, s, seed):
    stores = {}
    for line in open(pages_file):
        slug, pid = line.rstrip("\n").split("\t")
        stores.setdefault(slug, []).append(pid)
    # Rank stores by their seed index: seed-0 is the most popular.
    order = sorted(stores, key=lambda slug: int(slug.rsplit("-", 1)[1]))
    store_cdf = cdf(len(order), s)
    product_cdfs = {}
    rng = random.Random(seed)
    seq = []
    for _ in range(requests):
        slug = order[bisect.bisect_left(store_cdf, rng.random())]
        products = stores[slug]
        c = product_cdfs.get(slug)
        if c is None:
            c = product_cdfs[slug] = cdf(len(products), s)
        pid = products[min(bisect.bisect_left(c, rng.random()), len(products) - 1)]
        seq.append(f"/{slug}/product/{pid}")
    return seq, len(order), sum(len(p) for p in stores.values())


def worker(args):
    base, paths = args
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    sources, statuses = Counter(), Counter()
    for path in paths:
        res, _ = get(conn, path)
        statuses[res.status] += 1
        sources[res.getheader("x-kirana-cache", "none")] += 1
    return sources, statuses


def run(base, pages_file, requests, s, workers, seed):
    seq, n_stores, n_pages = sequence(pages_file, requests, s, seed)
    chunks = [(base, seq[w::workers]) for w in range(workers)]
    t0 = time.monotonic()
    with mp.Pool(workers) as pool:
        results = pool.map(worker, chunks)
    elapsed = time.monotonic() - t0
    sources, statuses = Counter(), Counter()
    for src, st in results:
        sources.update(src)
        statuses.update(st)
    distinct = len(set(seq))
    total = len(seq)
    served = sources["hit"] + sources["hit-shared"] + sources["stale"]
    report = {
        "requests": total,
        "zipf_s": s,
        "stores": n_stores,
        "product_pages": n_pages,
        "distinct_pages_requested": distinct,
        "seconds": round(elapsed, 1),
        "req_per_s": round(total / elapsed),
        "x_kirana_cache": dict(sources),
        "status": {str(k): v for k, v in statuses.items()},
        "hit_ratio_fresh": round(sources["hit"] / total, 4),
        "hit_ratio_served_from_cache": round(served / total, 4),
        "ideal_hit_ratio": round(1 - distinct / total, 4),
        "top_1pct_pages_share": top_share(seq, 0.01),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


def top_share(seq, frac):
    counts = sorted(Counter(seq).values(), reverse=True)
    k = max(1, int(len(counts) * frac))
    return round(sum(counts[:k]) / len(seq), 4)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["discover"] and len(argv) == 4:
        discover(argv[1], int(argv[2]), argv[3])
    elif argv[:1] == ["run"] and len(argv) >= 4:
        opts = {"--s": "1.0", "--workers": "4", "--seed": "7"}
        rest = argv[4:]
        for i in range(0, len(rest), 2):
            opts[rest[i]] = rest[i + 1]
        run(argv[1], argv[2], int(argv[3]), float(opts["--s"]), int(opts["--workers"]), int(opts["--seed"]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
