/** Bench baseline program: no resources (the cost of a preview itself: SDK, host start, stack). */
export const nothing = 1;
