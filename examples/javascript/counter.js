// The examples' counter in JavaScript, built into a component by ComponentizeJS (through jco).
// Its state is a module variable: Invicta keeps it across crashes and moves by replaying the
// worker's oplog, with nothing Invicta-specific in the code. (s64 is a BigInt in JavaScript.)

let total = 0n;

export function add(delta) {
  total += delta;
  return total;
}

export function get() {
  return total;
}
