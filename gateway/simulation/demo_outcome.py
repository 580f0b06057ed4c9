"""What `abgate demo` prints at the end: offline metrics, the volume study, each look, the three verdicts and
the timings (with --json: the outcome itself). The outcome is built in gateway/simulation/demo_traffic.py."""

from __future__ import annotations

import json

from gateway.simulation.demo_traffic import AA, AB, AB_SHARE, ARMS, INTER, INTER_SHARE


def print_outcome(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    off = result["offline"]
    print("\nabgate demo: SciFact, fine-tuned vs all-MiniLM-L6-v2 (offline: NDCG@10 on SciFact test)")
    for arm in ARMS:
        print(f"  offline {arm:<10} NDCG@10 {off[arm]['ndcg@10']:.4f}  Recall@100 {off[arm]['recall@100']:.4f}  "
              f"MRR@10 {off[arm]['mrr@10']:.4f}")
    plan = result.get("volume_study")
    if plan:
        power = ", ".join(f"{p['users']}: {p['power_sequential']:.2f}" for p in plan["ab"]["points"])
        target = plan.get("target_power", 0.8)
        print(f"Volume study on {plan['ab'].get('metric', 'ctr')} (click model replayed over the offline rankings, "
              f"{plan['ab']['points'][0]['reps']} runs per volume): sequential power by users in the A/B test: "
              f"{power}")
        print(f"  -> {plan['ab']['users_needed']} users for {target:.0%} power; A/A false-positive rate at most "
              f"{max(p['wrong_sequential'] for p in plan['aa']['points']):.1%}")
    for s in result["stages"]:
        inter_winner = s["verdicts"].get(INTER, {}).get("winner")
        print(f"  after {s['users']:>6} users ({s['searches']} searches, {s.get('searches_per_s')}/s): A/B winner: "
              f"{s['verdicts'][AB]['winner'] or 'none yet'}; interleaving winner: {inter_winner or 'none yet'}; "
              f"A/A winner: {s['verdicts'][AA]['winner'] or 'none'}")
    print(f"A/B verdict: {result['ab']['headline']}")
    lift = result["ab"]["primary_lift"]
    if lift.get("lift") is not None:
        print(f"  {result['ab'].get('primary_metric') or 'primary metric'} lift {lift['lift']:+.2%}, always-valid "
              f"interval [{lift['ci_low']:+.2%}, {lift['ci_high']:+.2%}]")
    if result["agrees_with_offline"]:
        print(f"  online agrees with offline ({result['offline_winner']} better), significant after "
              f"{result['users_needed']} users (whole layer; {AB_SHARE:.0%} of them in the A/B test)")
    else:
        print(f"  not significant yet at this volume; the estimate points "
              f"{'the same way as' if result['same_direction'] else 'against'} offline NDCG "
              f"({result['offline_winner']} better). The volume study above says how many users it takes: "
              "rerun with DEMO_ARGS='--max-users N' to replay more.")
    inter, pref = result["interleaving"], result["interleaving"]["preference"]
    if plan and plan.get("interleaving"):
        print(f"Interleaving volume study: {plan['interleaving']['users_needed']} interleaved users for "
              f"{plan.get('target_power', 0.8):.0%} power, against {plan['ab']['users_needed']} A/B users")
    if pref.get("mean") is not None:
        if result.get("interleaving_users_needed"):
            print(f"Interleaving named {result['offline_winner']} after {result['interleaving_users_needed']} layer "
                  f"users ({INTER_SHARE:.0%} of them interleaved), the A/B test after {result['users_needed']}")
        print(f"Interleaving verdict ({pref['units']} users with a credited click, {INTER_SHARE:.0%} of the layer): "
              f"{inter['headline']} preference {pref['mean']:+.3f} [{pref['ci_low']:+.3f}, {pref['ci_high']:+.3f}], "
              f"wins/losses/ties {pref['wins']}/{pref['losses']}/{pref['ties']}")
    else:
        print(f"Interleaving verdict: {inter['headline']}")
    print(f"A/A verdict: {result['aa']['headline']} -> "
          f"{'a false positive!' if result['aa_declared_winner'] else 'no winner, as it should be'}")
    print(f"Dashboard: {result['dashboard']['ab']} (live while the gateway runs: "
          f"`abgate demo --keep-serving`); as a file: {result['static_dashboard']['ab']} "
          f"(A/A: {result['static_dashboard']['aa']})")
    print(f"Timings (s): {result['timings']}")
