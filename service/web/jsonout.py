"""Flask's JSON writer, except that Decimals are written as JSON numbers, exactly.

Credits are integer micro-credits; an amount with more than 15 significant digits cannot be
shown exactly as a float (2e12 credits plus 0.0001 prints as ...0.0002), so billing hands such
amounts over as Decimals. Flask would write those as strings; simplejson writes them as
numbers. Bodies without a Decimal (nearly all) take Flask's own path.
"""
from __future__ import annotations

from decimal import Decimal

import simplejson
from flask.json.provider import DefaultJSONProvider


class _HasDecimal(Exception):
    pass


class ExactJSONProvider(DefaultJSONProvider):
    @staticmethod
    def default(o):
        if isinstance(o, Decimal):
            raise _HasDecimal
        return DefaultJSONProvider.default(o)

    def dumps(self, obj, **kwargs) -> str:
        try:
            return super().dumps(obj, **kwargs)
        except _HasDecimal:
            kwargs.update(default=DefaultJSONProvider.default, ensure_ascii=self.ensure_ascii,
                          sort_keys=self.sort_keys)
            return simplejson.dumps(obj, use_decimal=True, **kwargs)
