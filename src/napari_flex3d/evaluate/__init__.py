"""Evaluation against a simulation's ground truth: how well training recovered a known motion.

:mod:`.recovery` scores a run folder against a ``flex3d simulate`` folder (latents against
true coordinates, maps against true states, the flow's displacement modes); :mod:`.demo`
runs simulate -> train -> volume series -> those scores (``flex3d demo``). The top of the
feature rooms: may import config/conventions, core (io, ops, mesh, model) and the other
features (simulate, training, explore, reconstruct); only api/cli, tests and benchmarks
import it.
"""
