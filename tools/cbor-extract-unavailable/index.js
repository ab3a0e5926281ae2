"use strict";
// cbor-x catches this and uses its pure-JavaScript string extraction.
throw new Error("cbor-extract native acceleration is not installed (see package.json description)");
