import js from "@eslint/js";
import tseslint from "typescript-eslint";

// eslint requires its configuration as the module's default export.
// eslint-disable-next-line no-restricted-syntax
export default tseslint.config(
  { ignores: ["dist/", "node_modules/", "var/", "coverage/", ".scratch/", "native/build/"] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ["vitest.config.ts"] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-unused-vars": [
        "error",
        { argsIgnorePattern: "^_", varsIgnorePattern: "^_" },
      ],
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: false }],
      "@typescript-eslint/restrict-template-expressions": [
        "error",
        { allowNumber: true, allowBoolean: true },
      ],
      "no-restricted-syntax": [
        "error",
        { selector: "TSEnumDeclaration", message: "Use an `as const` object instead of an enum." },
        { selector: "ExportDefaultDeclaration", message: "Named exports only." },
      ],
    },
  },
  {
    files: ["**/*.js", "**/*.mjs"],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      ...tseslint.configs.disableTypeChecked.languageOptions,
      globals: {
        process: "readonly",
        console: "readonly",
        URL: "readonly",
        setTimeout: "readonly",
        clearTimeout: "readonly",
        setInterval: "readonly",
        clearInterval: "readonly",
        Buffer: "readonly",
        performance: "readonly",
        fetch: "readonly",
      },
    },
  },
  {
    // The wire codec and the sequencer stay free of I/O.
    files: ["nbd/codec/**/*.ts", "nbd/constants.ts", "src/sequencer/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            "node:net",
            "node:fs",
            "node:fs/*",
            "node:tls",
            "node:child_process",
            "node:dgram",
          ],
        },
      ],
    },
  },
  {
    // Only the CLI reads argv/env or sets the exit code.
    files: ["nbd/**/*.ts", "src/**/*.ts"],
    ignores: ["src/cli/**"],
    rules: {
      "no-restricted-properties": [
        "error",
        { object: "process", property: "argv", message: "Only src/cli reads process.argv." },
        { object: "process", property: "env", message: "Only src/cli reads process.env." },
        { object: "process", property: "exitCode", message: "Only src/cli sets the exit code." },
        { object: "process", property: "exit", message: "Only src/cli exits the process." },
      ],
    },
  },
);
