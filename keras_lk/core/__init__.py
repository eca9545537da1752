"""The small internal core every other room stands on: the backend seam
(`backend`, the only module that asks which backend runs), argument checks
(`checks`), the install check (`install`), what wraps what (`chain`) and
which weights a proximal optimizer handles (`handled`)."""
