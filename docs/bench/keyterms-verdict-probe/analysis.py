"""Tables of docs/biasing.md's "Probe" section from verdicts.json (probe.py): candidates taken, true / false."""
import json
R = json.load(open('docs/bench/keyterms-verdict-probe/verdicts.json'))
# one record per (utterance, span, respelling): the first scored (the one whose verdict sticks)
seen, recs = set(), []
for r in R:
    k = (r['set'], r['id'], r['span'].lower(), r['text'].lower())
    if k not in seen:
        seen.add(k); recs.append(r)
print(len(R), "scored,", len(recs), "distinct")
def table(rs, label):
    T = [r for r in rs if r['true']]; F = [r for r in rs if not r['true']]
    line = f"{label:18s} true {len(T):3d} false {len(F):4d} | shipped (prompt gain > 0): TP {sum(r['gain']>0 for r in T):3d} FP {sum(r['gain']>0 for r in F):3d}"
    for b in (0, 1, 2, 3, 4, 5, 6):
        line += f" | b={b}: {sum(r['gain_np']+b>0 for r in T)}/{sum(r['gain_np']+b>0 for r in F)}"
    print(line)
for s in ('speech-dev-noisy', 'speech-dev-hard', 'speech-dev'):
    table([r for r in recs if r['set'] == s], s)
table(recs, 'all')
T = sorted([r for r in recs if r['true']], key=lambda r: r['gain_np'])
print("true candidates, gain_np / gain (prompt):")
for r in T: print(f"  {r['set'][-5:]} {r['id'][:22]:22s} {r['span'][:18]:18s} -> {r['text'][:18]:18s} np {r['gain_np']:7.2f} prompt {r['gain']:7.2f}")
print("\nleave-one-set-out boost (max TP - FP on the other two sets, b in 0..8 by 0.5), held-out TP/FP against shipped:")
sets = ('speech-dev-noisy', 'speech-dev-hard', 'speech-dev')
bs = [x / 2 for x in range(0, 17)]
def tpfp(rs, f):
    return sum(f(r) for r in rs if r['true']), sum(f(r) for r in rs if not r['true'])
for held in sets:
    fit = [r for r in recs if r['set'] != held]
    best = max(bs, key=lambda b: (lambda t, f: t - f)(*tpfp(fit, lambda r: r['gain_np'] + b > 0)))
    test = [r for r in recs if r['set'] == held]
    print(f"  {held:17s} b = {best}: boost TP/FP {tpfp(test, lambda r: r['gain_np'] + best > 0)}  shipped {tpfp(test, lambda r: r['gain'] > 0)}")
