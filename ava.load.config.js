// The 60 s load test runs on its own after the main suite (scripts/test.sh): it keeps both cores
// busy, and the deadlines other tests assert must not be measured against it.
export default {
  typescript: { rewritePaths: { 'src/': 'dist/src/', 'test/': 'dist/test/' }, compile: false },
  files: ['test/reliability-load.test.ts'],
  timeout: '3m',
  workerThreads: false,
};
