"""``sklearn``: the source estimator itself, saved with skops (the reference of tabular models).

The version also holds ``sklearn.json``: the types outside skops' default trust that the file
holds (trusted by the user when the source was loaded: listed with --trust-types, or a pickle
loaded with --trust), so serving loads exactly those and nothing else.
"""

from __future__ import annotations

import json

from .base import BuildContext, VariantBuild, VariantSkipped


def build_sklearn(ctx: BuildContext) -> VariantBuild:
    tab = ctx.source.tabular
    if tab is None:
        raise VariantSkipped("the source is not a scikit-learn model")
    import skops.io as sio

    from serving.runtimes.sklearn import SIDECAR

    out = ctx.scratch("sklearn")
    path = out / "model.skops"
    try:
        sio.dump(tab.estimator, path)
        trusted = sio.get_untrusted_types(file=path)
    except Exception as e:
        raise VariantSkipped(f"skops cannot save this estimator ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None
    sidecar = out / SIDECAR
    sidecar.write_text(json.dumps({"trusted_types": trusted,
                                   "classes": [str(c) for c in tab.classes]}, indent=2))
    notes = ["the scikit-learn estimator as given (predict_proba), saved with skops"]
    if trusted:
        notes.append(f"types trusted when loading: {', '.join(trusted)}")
    return VariantBuild("sklearn", "sklearn", path, providers=[], notes=notes,
                        extra_files={SIDECAR: sidecar})
